//! Every relative link of the documentation resolves: README.md, CONTRIBUTING.md, `docs/*.md`,
//! `deploy/*.md` and `forwarder/README.md`. The file (or folder) a link names exists in the
//! repository, and an anchor (`page.md#heading`, `#heading`) names a heading of that page, as
//! GitHub makes anchors from headings. Links inside code are not links and are skipped.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The pages checked, relative to the repository.
fn pages() -> Vec<String> {
    let mut pages = vec![
        "README.md".to_string(),
        "CONTRIBUTING.md".to_string(),
        "forwarder/README.md".to_string(),
    ];
    for dir in ["docs", "deploy"] {
        let mut found: Vec<String> = std::fs::read_dir(repo().join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| {
                e.expect("directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".md"))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        found.sort();
        pages.extend(found);
    }
    pages
}

/// The text outside fenced code blocks, with inline code spans blanked.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if fenced {
            out.push('\n');
            continue;
        }
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                out.push(c);
            }
        }
        out.push('\n');
    }
    out
}

/// The targets of the page's links and images: what stands in `](…)`.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut targets = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find([')', ' ', '\n']).unwrap_or(after.len());
        targets.push(after[..end].to_string());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings; a repeated heading gets `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if fenced || hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim_end_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while !anchors.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
    }
    anchors
}

/// `page`'s directory joined with `path`, `..` resolved; `None` when it leaves the repository.
fn resolve(page: &str, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Path::new(page)
        .parent()
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for component in Path::new(path).components() {
        match component {
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// What is wrong with the links of `page` (relative to the repository).
fn broken_links(page: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(page)).expect(page);
    let mut problems = Vec::new();
    for target in link_targets(&text) {
        let is_external = target
            .split_once(':')
            .is_some_and(|(scheme, _)| scheme.chars().all(|c| c.is_ascii_alphabetic()));
        if is_external || target.is_empty() {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let file = if path.is_empty() {
            PathBuf::from(page)
        } else {
            match resolve(page, path) {
                Some(file) => file,
                None => {
                    problems.push(format!("{page}: `{target}` leaves the repository"));
                    continue;
                }
            }
        };
        let full = repo().join(&file);
        if !full.exists() {
            problems.push(format!(
                "{page}: `{target}`: {} does not exist",
                file.display()
            ));
            continue;
        }
        if let Some(anchor) = anchor
            && file.extension().is_some_and(|e| e == "md")
        {
            let target_text = std::fs::read_to_string(&full).expect("linked page");
            if !anchors(&target_text).contains(anchor) {
                problems.push(format!(
                    "{page}: `{target}`: {} has no heading whose anchor is `#{anchor}`",
                    file.display()
                ));
            }
        }
    }
    problems
}

#[test]
fn every_relative_link_of_the_documentation_resolves() {
    let problems: Vec<String> = pages().iter().flat_map(|p| broken_links(p)).collect();
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_checks_find_what_is_broken() {
    assert_eq!(slug("What `full` costs"), "what-full-costs");
    assert_eq!(
        slug("8. logrotate (only with `[telemetry] file`)"),
        "8-logrotate-only-with-telemetry-file"
    );
    assert_eq!(slug("The database's folder"), "the-databases-folder");
    let page = "# A\n\n## B c\n\n## B c\n\n```sh\n# not a heading\n```\n";
    assert_eq!(
        anchors(page),
        BTreeSet::from(["a".to_string(), "b-c".to_string(), "b-c-1".to_string()])
    );
    let text = "see [x](docs/a.md#b), `[not](a link)`, ![img](p.png \"t\")\n```\n[no](code)\n```\n";
    assert_eq!(link_targets(text), ["docs/a.md#b", "p.png"]);
    assert_eq!(
        resolve("docs/x.md", "../deploy/BACKUP.md"),
        Some(PathBuf::from("deploy/BACKUP.md"))
    );
    assert_eq!(resolve("README.md", "../outside.md"), None);
}

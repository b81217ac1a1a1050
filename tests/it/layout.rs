//! README's "Layout" section and the deeper levels in `docs/architecture.md` list exactly the
//! modules under `src/`: every directory and every `.rs` file but `mod.rs` (a directory's line
//! stands for it). README lists the top two levels, `docs/architecture.md` the levels below
//! (naming their parent directories for context). A module added, moved or removed without its
//! line fails here, with the lines to add or drop.

use std::collections::BTreeSet;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// How deep an entry is: `lib.rs` 1, `db/` 1, `db/bulk.rs` 2, `db/tables/` 2, …
fn depth(entry: &str) -> usize {
    entry.trim_end_matches('/').split('/').count()
}

/// Every module of `src/` as a path below it, directories ending in `/`.
fn source_entries() -> BTreeSet<String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() {
                let sub = format!("{prefix}{name}/");
                out.insert(sub.clone());
                walk(&path, &sub, out);
            } else if name.ends_with(".rs") && name != "mod.rs" {
                out.insert(format!("{prefix}{name}"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&repo().join("src"), "", &mut out);
    out
}

/// The entries of the first ```` ```text ```` tree after `heading` in `file`: a `src/` line,
/// then one line per entry, indented two spaces per level, its name first.
fn listed(file: &str, heading: &str) -> Vec<String> {
    let text = format!(
        "\n{}",
        std::fs::read_to_string(repo().join(file)).expect(file)
    );
    let after = text
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{file} has no line `{heading}`"))
        .1;
    let tree = after
        .split_once("```text\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .unwrap_or_else(|| panic!("{file}: no ```text block after `{heading}`"))
        .0;
    let mut lines = tree.lines();
    assert_eq!(
        lines.next().map(str::trim_end),
        Some("src/"),
        "{file}: the tree under `{heading}` starts with `src/`"
    );
    let mut parents: Vec<String> = Vec::new();
    let mut entries = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let indent = line.len() - line.trim_start().len();
        let name = line.split_whitespace().next().unwrap_or_default();
        assert!(
            indent % 2 == 0 && indent >= 2 && indent / 2 <= parents.len() + 1,
            "{file}: `{line}` is not indented two spaces deeper than a directory above it"
        );
        assert!(
            name.ends_with('/') || name.ends_with(".rs"),
            "{file}: `{name}` is neither a directory (`name/`) nor a `.rs` file"
        );
        parents.truncate(indent / 2 - 1);
        let entry = format!("{}{name}", parents.concat());
        if name.ends_with('/') {
            parents.push(name.to_string());
        }
        entries.push(entry);
    }
    entries
}

/// Compares what `file` lists at the depths `wanted` keeps with `src/`; entries outside those
/// depths (parents named for context) must exist.
fn check(file: &str, heading: &str, wanted: impl Fn(usize) -> bool) {
    let source = source_entries();
    let listed = listed(file, heading);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in &listed {
        if !seen.insert(entry.clone()) {
            problems.push(format!("listed twice in {file}: src/{entry}"));
        }
        if !source.contains(entry) {
            problems.push(format!("listed in {file} but not in src/: src/{entry}"));
        }
    }
    for entry in source.iter().filter(|e| wanted(depth(e))) {
        if !seen.contains(entry) {
            problems.push(format!("missing from {file} ({heading}): src/{entry}"));
        }
    }
    for entry in seen.iter().filter(|e| !wanted(depth(e))) {
        if !entry.ends_with('/') {
            problems.push(format!(
                "{file} lists src/{entry}, which belongs to the other list (README: the top two levels, docs/architecture.md: deeper)"
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn readme_layout_lists_the_top_two_levels_of_src() {
    check("README.md", "## Layout", |depth| depth <= 2);
}

#[test]
fn architecture_page_lists_the_levels_below() {
    check(
        "docs/architecture.md",
        "## Deeper levels of `src/`",
        |depth| depth >= 3,
    );
}

#[test]
fn a_tree_is_read_as_paths() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "## T\n\n```text\nsrc/\n  a.rs    x\n  b/      y\n    c.rs  z\n    d/\n      e.rs\n  f.rs\n```\n",
    )
    .expect("write");
    let path = page.to_string_lossy().into_owned();
    // `listed` reads relative to the repository; an absolute path joins as itself.
    assert_eq!(
        listed(&path, "## T"),
        ["a.rs", "b/", "b/c.rs", "b/d/", "b/d/e.rs", "f.rs"]
    );
    assert_eq!(depth("b/d/e.rs"), 3);
    assert_eq!(depth("b/"), 1);
}

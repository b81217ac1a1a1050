//! Checks on the shape of the code that review would otherwise have to catch: no dependency
//! cycle between modules (at any level of the module tree), and no source file over 500 lines
//! unless its top says why (a `//!` line starting `Long file:`).
//!
//! The module graph is read from `src/` itself: every `crate::…`, `super::…` and `self::…` path
//! (in `use` trees and in code, comments stripped) is resolved to the deepest module it names,
//! and an edge is drawn between the two children of the modules' lowest common ancestor. So
//! `db/store.rs` naming `super::sqlite_rows` is the edge `store -> sqlite_rows` inside `db`, and
//! `handlers/relay.rs` naming `crate::config::X` is `handlers -> config` at the top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 500;
const REASON_MARKER: &str = "//! Long file:";

/// A module path below the crate root, e.g. `["db", "store"]`.
type ModPath = Vec<String>;

struct SourceFile {
    module: ModPath,
    text: String,
}

fn source_files() -> Vec<SourceFile> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(root, &path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let relative = path.strip_prefix(root).expect("under src");
        let mut module: ModPath = relative
            .iter()
            .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let last = module.last().cloned().unwrap_or_default();
        let is_mod_root = matches!(last.as_str(), "mod" | "lib" | "main");
        if is_mod_root {
            module.pop();
        }
        if module.is_empty() && last == "main" {
            continue; // the binary's entry point, not part of the library's tree
        }
        let text = std::fs::read_to_string(&path).expect("readable source");
        out.push(SourceFile { module, text });
    }
}

/// Source without comments (line comments and doc comments), so doc links are not edges.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let code = match line.find("//") {
            // keep `//` inside string literals such as URLs: only cut when no quote precedes it
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Every path a file names that starts at `crate`, `super` or `self`, expanded from `use` trees.
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b'$'
                || bytes[i - 1] == b':');
        if starts_word {
            for anchor in ["crate::", "super::", "self::"] {
                if bytes[i..].starts_with(anchor.as_bytes()) {
                    let mut tree = Vec::new();
                    let end = parse_tree(code, i, &mut Vec::new(), &mut tree);
                    paths.extend(tree);
                    i = end.max(i + anchor.len());
                    break;
                }
            }
        }
        i += 1;
    }
    paths
}

/// Parses a path or `use` tree starting at `at`; pushes each full path into `out` with `prefix`
/// prepended. Returns where parsing stopped.
fn parse_tree(
    code: &str,
    mut at: usize,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let bytes = code.as_bytes();
    let depth = prefix.len();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            at += 1;
            loop {
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    at += 1;
                    break;
                }
                let before = at;
                at = parse_tree(code, at, prefix, out);
                if at == before {
                    at += 1;
                }
            }
            prefix.truncate(depth);
            return at;
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        if at == start {
            if bytes.get(at) == Some(&b'*') {
                at += 1;
            }
            out.push(prefix.clone());
            prefix.truncate(depth);
            return at;
        }
        prefix.push(code[start..at].to_string());
        if bytes[at..].starts_with(b"::") {
            at += 2;
            continue;
        }
        out.push(prefix.clone());
        prefix.truncate(depth);
        return at;
    }
}

/// Resolves a named path, as written in `from`, to the deepest module of `modules` it reaches.
fn resolve(from: &SourceFile, path: &[String], modules: &BTreeSet<ModPath>) -> ModPath {
    let mut base: ModPath = from.module.clone();
    let mut rest = path;
    while let Some(first) = rest.first() {
        match first.as_str() {
            "crate" => base.clear(),
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    for segment in rest {
        let mut next = base.clone();
        next.push(segment.clone());
        if modules.contains(&next) {
            base = next;
        } else {
            break;
        }
    }
    base
}

/// Edges between sibling modules, keyed by their parent: `parent -> (from child -> to child)`.
fn sibling_edges() -> BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> {
    let files = source_files();
    let modules: BTreeSet<ModPath> = files.iter().map(|f| f.module.clone()).collect();
    let mut edges: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        for path in paths_named(&strip_comments(&file.text)) {
            let target = resolve(file, &path, &modules);
            let common = file
                .module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let (Some(from), Some(to)) = (file.module.get(common), target.get(common)) else {
                continue; // one is an ancestor of the other: parent and child, not siblings
            };
            edges
                .entry(file.module[..common].to_vec())
                .or_default()
                .entry(from.clone())
                .or_default()
                .insert(to.clone());
        }
    }
    edges
}

/// Strongly connected components with more than one member (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(targets) = s.graph.get(v) {
            for w in targets {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let mut problems = Vec::new();
    for (parent, graph) in sibling_edges() {
        for cycle in cycles(&graph) {
            let place = if parent.is_empty() {
                "the crate".to_string()
            } else {
                parent.join("::")
            };
            let detail: Vec<String> = cycle
                .iter()
                .map(|m| {
                    let to: Vec<&str> = graph[m]
                        .iter()
                        .filter(|t| cycle.contains(t))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", to.join(", "))
                })
                .collect();
            problems.push(format!("cycle in {place}: {}", detail.join("; ")));
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn long_source_files_say_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![root];
    let mut problems = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("src readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                let text = std::fs::read_to_string(&path).expect("readable");
                let lines = text.lines().count();
                let explained = text
                    .lines()
                    .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
                    .any(|l| l.starts_with(REASON_MARKER));
                if lines > MAX_LINES && !explained {
                    problems.push(format!("{} ({lines} lines)", path.display()));
                }
            }
        }
    }
    problems.sort();
    assert!(
        problems.is_empty(),
        "files over {MAX_LINES} lines without a `{REASON_MARKER}` line in their top comment:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_graph_reader_sees_known_edges() {
    // The checker must see real edges, or it would pass on anything.
    let edges = sibling_edges();
    let top = &edges[&Vec::<String>::new()];
    assert!(top["handlers"].contains("events"), "{top:?}");
    assert!(top["http"].contains("processing"), "{top:?}");
    let tree = paths_named("use crate::{a::{b, c::d}, e};\nlet x = super::f::g();");
    assert_eq!(
        tree,
        vec![
            vec!["crate", "a", "b"],
            vec!["crate", "a", "c", "d"],
            vec!["crate", "e"],
            vec!["super", "f", "g"],
        ]
    );
}

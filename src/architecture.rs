//! The module graph of `src/` has no cycles (see "Architecture" in the crate docs).
//!
//! This reads the sources: every `crate::<module>` path in a file is an edge from the file's
//! module to that one (files under `src/hub/` are all module `hub`). Paths to re-exports at the
//! crate root (`crate::Hub`, capitalized) are not edges. The check is a depth-first search.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module -> modules it names`, from the sources under `src/`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).expect("under src");
        let first = rel.iter().next().expect("a path").to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" {
            continue; // the root declares and re-exports every module
        }
        let text = std::fs::read_to_string(&file).expect("a source file");
        let deps = graph.entry(module.clone()).or_default();
        for name in referenced_modules(&text) {
            if name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

/// The `x` of every `crate::x` in `text` (lowercase: modules, not root re-exports), including
/// those in `use crate::{a, b}` groups.
fn referenced_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name = ident(part.trim());
                if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                    out.insert(name);
                }
            }
            continue;
        }
        let name = ident(rest);
        if name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.insert(name);
        }
    }
    out
}

/// A cycle in the graph, if there is one, as the list of modules around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|n| n == node).expect("on the path");
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycles() {
    let graph = module_graph();
    assert!(graph.contains_key("hub") && graph.contains_key("ids"), "read the sources: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_vocabulary_names_no_component() {
    let graph = module_graph();
    let vocabulary = [
        "ids",
        "kinds",
        "labels",
        "frame",
        "retention",
        "config",
        "error",
        "envelope",
        "stats",
        "action",
        "protocol",
        "client_frame",
        "timer",
    ];
    let components = ["connection", "user", "routing", "stream", "outbox", "hub", "view"];
    for v in vocabulary {
        for c in components {
            assert!(
                !graph.get(v).is_some_and(|deps| deps.contains(c)),
                "vocabulary module `{v}` depends on component `{c}`"
            );
        }
    }
}

#[test]
fn the_checker_finds_a_cycle_it_is_shown() {
    let text_a = "use crate::b::X;";
    let text_b = "use crate::{a, Hub};\nfn f() { crate::c::g() }";
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), referenced_modules(text_a));
    graph.insert("b".to_owned(), referenced_modules(text_b));
    assert_eq!(graph["b"], BTreeSet::from(["a".to_owned(), "c".to_owned()]));
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "a".into()]));
    graph.get_mut("b").expect("b").remove("a");
    assert_eq!(find_cycle(&graph), None);
}

//! The modules of `src/` import one way: no cycle among them (docs/design.md §2).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the other top-level modules its files name through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = entry.path().strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ["main", "lib", "build"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                deps.entry(top.clone()).or_default().insert(name);
            }
        }
    }
    deps
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let deps = imports();
    assert!(deps.len() > 10, "{deps:?}");
    // A module is in a cycle when it reaches itself.
    for start in deps.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = deps[start].iter().collect();
        let mut path = Vec::new();
        while let Some(m) = stack.pop() {
            assert!(m != start, "{start} reaches itself through {path:?}");
            if seen.insert(m.clone()) {
                path.push(m.clone());
                stack.extend(deps.get(m).into_iter().flatten());
            }
        }
    }
}

//! The layers of `src/lib.rs`, checked: no module of the library uses one
//! listed above it (a `crate::` path in code, not in comments).

use std::collections::BTreeMap;
use std::path::Path;

/// The library's top modules, bottom up, as src/lib.rs lists them; modules
/// on one line share a layer.
const LAYERS: &[&[&str]] = &[
    &["defaults"],
    &["domain"],
    &["settings"],
    &["retry", "metrics", "startup"],
    &["store", "live", "catalogue", "sources", "credentials"],
    &["app"],
    &["worker"],
    &["pb", "grpc"],
    &["server"],
    &["cli", "config"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(module) = line.strip_prefix("pub mod ") {
            let module = module.trim_end_matches(';');
            assert!(
                layer_of(module).is_some(),
                "src/lib.rs declares `{module}`, which this test does not place in a layer"
            );
        }
    }
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut violations = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        // main.rs, lib.rs and src/bin are the binaries and the root.
        let Some(own) = layer_of(&top) else { continue };
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                if code[at + "crate::".len()..].starts_with('{') {
                    violations.insert(
                        format!("{}:{}", relative.display(), n + 1),
                        "write one `crate::module::...` path per module, so layers can be checked"
                            .to_owned(),
                    );
                    continue;
                }
                let used: String = code[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(theirs) = layer_of(&used) {
                    if theirs > own {
                        violations.insert(
                            format!("{}:{}", relative.display(), n + 1),
                            format!("{top} (layer {own}) uses {used} (layer {theirs})"),
                        );
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layers used from below: {violations:#?}"
    );
}

//! The arrows point down (ARCHITECTURE.md, "Layers"): the pure core names no adapter, service or CLI module; the daemon runner names no service; only the CLI edge names `cmd`; the CLI starts services but borrows none of their items.
//!
//! A check over the source text, as a reader would make it with `grep`:
//! every `crate::<module>` a file mentions (in code or docs) is a use of
//! that module.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The pure core: values in, values out; no IO, no runtime, no service.
const CORE: &[&str] = &[
    "schema.rs",
    "normalize",
    "token.rs",
    "linkage.rs",
    "pseudonymize.rs",
    "ingest.rs",
    "record.rs",
    "wire.rs",
    "identity.rs",
    "days.rs",
    "hex.rs",
    "query",
    "report",
];
/// Modules of the layers above the core.
const ABOVE_CORE: &[&str] = &[
    "config",
    "daemon",
    "storage",
    "tls",
    "accept",
    "fsutil",
    "audit",
    "source",
    "steward",
    "evaluator",
    "cmd",
    "cli",
];
/// What only IO or a runtime needs.
const IO_WORDS: &[&str] = &["tokio::", "sled::", "rustls::", "hyper::", "std::fs::", "std::net::"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `path` (or `path` itself), with its text.
fn files(path: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            out.extend(files(&p));
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push((path.to_path_buf(), std::fs::read_to_string(path).unwrap()));
    }
    out
}

/// The crate's top-level modules a text names as `crate::<module>`.
fn modules_named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `divert_crate::`
        }
        let name: String = text[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        out.insert(name);
    }
    out
}

fn relative(p: &Path) -> String {
    p.strip_prefix(src()).unwrap().display().to_string()
}

#[test]
fn the_core_names_no_adapter_service_or_cli_module_and_does_no_io() {
    let mut wrong = Vec::new();
    for core in CORE {
        let found = files(&src().join(core));
        assert!(!found.is_empty(), "core module {core} not found: update CORE");
        for (path, text) in found {
            for m in modules_named(&text) {
                if ABOVE_CORE.contains(&m.as_str()) {
                    wrong.push(format!("{} names crate::{m}", relative(&path)));
                }
            }
            for w in IO_WORDS {
                if text.contains(w) {
                    wrong.push(format!("{} uses {w}", relative(&path)));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the core reaches up:\n{}", wrong.join("\n"));
}

#[test]
fn only_the_cli_edge_names_cmd_and_the_daemon_runner_names_no_service() {
    let mut wrong = Vec::new();
    for (path, text) in files(&src()) {
        let rel = relative(&path);
        let named = modules_named(&text);
        let edge = rel.starts_with("cmd/") || ["main.rs", "cli.rs", "lib.rs"].contains(&rel.as_str());
        if !edge && named.contains("cmd") {
            wrong.push(format!("{rel} names crate::cmd"));
        }
        if rel.starts_with("daemon/") {
            for service in ["source", "steward", "evaluator"] {
                if named.contains(service) {
                    wrong.push(format!("{rel} names crate::{service}"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "arrows pointing up:\n{}", wrong.join("\n"));
}

#[test]
fn the_cli_borrows_no_item_of_a_server_module() {
    // `cmd/serve.rs` is the composition root: it starts the role's service.
    let mut wrong = Vec::new();
    for (path, text) in files(&src().join("cmd")) {
        let rel = relative(&path);
        if rel == "cmd/serve.rs" {
            continue;
        }
        for service in ["source", "steward"] {
            if modules_named(&text).contains(service) {
                wrong.push(format!("{rel} names crate::{service}"));
            }
        }
    }
    assert!(wrong.is_empty(), "the CLI borrows from a server module:\n{}", wrong.join("\n"));
}

#[test]
fn no_daemon_path_needs_the_offline_ca() {
    let mut wrong = Vec::new();
    for dir in ["daemon", "source", "steward", "tls.rs", "accept.rs", "storage.rs", "evaluator.rs", "audit.rs"] {
        for (path, text) in files(&src().join(dir)) {
            if modules_named(&text).contains("pki") {
                wrong.push(relative(&path));
            }
        }
    }
    assert!(wrong.is_empty(), "daemon paths naming crate::pki (the offline CA): {wrong:?}");
}

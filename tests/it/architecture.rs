//! The layers of `src/` (ARCHITECTURE.md), checked from the source: a module may name only
//! the layers below it and the crates its layer may use. Test code (`#[cfg(test)]` items) is
//! exempt: tests may build whatever they need.

use std::path::{Path, PathBuf};

/// The layers, lowest first. A layer may use those with a lower or equal rank.
const LAYERS: &[(&str, u8)] = &[
    ("base", 0),
    ("verify", 1),
    ("credential", 2),
    ("domain", 3),
    ("store", 4),
    ("audit", 5),
    ("service", 6),
    ("rpc", 7),
    ("web", 7),
    ("daemon", 8),
    ("client", 8),
];

/// External crates a layer must not name.
fn forbidden_crates(layer: &str) -> &'static [&'static str] {
    const IO: &[&str] = &[
        "tokio",
        "tonic",
        "prost",
        "hyper",
        "sled",
        "etcd_client",
        "ctap_hid_fido2",
        "yubikey",
    ];
    const STORE: &[&str] = &["tonic", "prost", "hyper", "ctap_hid_fido2", "yubikey"];
    const SERVICE: &[&str] = &[
        "tonic",
        "prost",
        "hyper",
        "sled",
        "etcd_client",
        "ctap_hid_fido2",
        "yubikey",
    ];
    match layer {
        "base" | "verify" | "credential" | "domain" => IO,
        "store" => STORE,
        "audit" | "service" => SERVICE,
        "rpc" | "web" => &["sled", "etcd_client", "ctap_hid_fido2", "yubikey"],
        "daemon" => &["ctap_hid_fido2", "yubikey"],
        _ => &[],
    }
}

/// Store backends: only the store itself and the daemon (which picks one) name them.
const BACKENDS: &[&str] = &["SledStore", "sled_store", "EtcdStore", "etcd_store"];

fn rank(layer: &str) -> Option<u8> {
    LAYERS.iter().find(|(l, _)| *l == layer).map(|(_, r)| *r)
}

/// The source without `#[cfg(test)]` items and comments.
fn production_code(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]" {
            let mut depth = 0i32;
            let mut opened = false;
            for item in lines.by_ref() {
                depth += item.matches('{').count() as i32 - item.matches('}').count() as i32;
                opened |= item.contains('{');
                if (opened && depth <= 0) || (!opened && item.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What `source`, a file of `layer`, names that its layer may not.
fn violations(layer: &str, source: &str) -> Vec<String> {
    let Some(own) = rank(layer) else {
        return Vec::new();
    };
    let code = production_code(source);
    let mut found = Vec::new();
    for (other, other_rank) in LAYERS {
        if *other_rank > own && code.contains(&format!("crate::{other}::")) {
            found.push(format!("names the higher layer `{other}`"));
        }
    }
    if !matches!(layer, "rpc" | "daemon" | "client") && code.contains("crate::pb::") {
        found.push("names the generated proto types (`pb`)".to_owned());
    }
    for krate in forbidden_crates(layer) {
        if code.contains(&format!("{krate}::")) {
            found.push(format!("uses the crate `{krate}`"));
        }
    }
    if !matches!(layer, "store" | "daemon") {
        for backend in BACKENDS {
            if code.contains(backend) {
                found.push(format!("names the store backend `{backend}`"));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut report = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let layer = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        // Test modules kept in their own files (`src/**/tests/`) are test code.
        if rank(&layer).is_none() || relative.components().any(|c| c.as_os_str() == "tests") {
            continue;
        }
        checked += 1;
        for v in violations(&layer, &std::fs::read_to_string(file).unwrap()) {
            report.push(format!("src/{}: {v}", relative.display()));
        }
    }
    assert!(
        checked > 40,
        "only {checked} files checked: is the tree where this test looks?"
    );
    assert!(report.is_empty(), "layering broken:\n{}", report.join("\n"));
}

#[test]
fn every_top_level_module_is_a_known_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(name) = line
            .strip_prefix("pub mod ")
            .and_then(|l| l.strip_suffix(';'))
        {
            assert!(
                rank(name).is_some(),
                "src/lib.rs declares `{name}`, which is no layer of ARCHITECTURE.md"
            );
        }
    }
}

#[test]
fn the_layer_check_catches_what_it_is_for() {
    let domain = "use crate::store::Store;\nuse tokio::sync::Notify;\n";
    let found = violations("domain", domain);
    assert!(found.iter().any(|v| v.contains("`store`")), "{found:?}");
    assert!(found.iter().any(|v| v.contains("`tokio`")), "{found:?}");
    assert!(
        violations("service", "use crate::rpc::Api;\n")
            .iter()
            .any(|v| v.contains("`rpc`"))
    );
    assert!(
        violations("service", "let s = SledStore::open(p);\n")
            .iter()
            .any(|v| v.contains("SledStore"))
    );
    assert!(
        violations("audit", "use crate::pb::Credential;\n")
            .iter()
            .any(|v| v.contains("pb"))
    );
    // Test items and comments are not production code.
    let tested =
        "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::daemon::x;\n}\n// crate::rpc::y\n";
    assert!(violations("domain", tested).is_empty());
    assert!(violations("daemon", "use crate::service::authority::Authority;\n").is_empty());
}

/// Code-like literals (`"area.reason"`) that follow `prefix` in `text`.
fn codes_after(text: &str, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let Some(literal) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(end) = literal.find('"') else {
            continue;
        };
        let code = &literal[..end];
        let is_code = code.split_once('.').is_some_and(|(area, reason)| {
            !area.is_empty()
                && !reason.is_empty()
                && code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        });
        if is_code {
            out.insert(code.to_owned());
        }
    }
}

#[test]
fn every_stable_error_code_is_in_the_catalogue_and_the_catalogue_has_no_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut codes = std::collections::BTreeSet::new();
    for file in files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "tests"))
    {
        let text = production_code(&std::fs::read_to_string(file).unwrap());
        if let Some(i) = text.find("impl Coded for") {
            codes_after(&text[i..], "=> ", &mut codes);
        }
        for kind in [
            "InvalidInput",
            "NotFound",
            "PermissionDenied",
            "Unauthenticated",
            "FailedPrecondition",
            "Conflict",
            "Unavailable",
            "Internal",
            "ResourceExhausted",
        ] {
            codes_after(&text, &format!("ErrorKind::{kind},"), &mut codes);
        }
    }
    assert!(
        codes.len() > 100,
        "only {} codes found: is the scan right?",
        codes.len()
    );
    let catalogue =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/errors.md"))
            .unwrap();
    let missing: Vec<_> = codes
        .iter()
        .filter(|c| !catalogue.contains(&format!("| `{c}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/errors.md (run scripts/error-catalogue): {missing:?}"
    );
    let mut listed = std::collections::BTreeSet::new();
    codes_after(&catalogue, "| `", &mut std::collections::BTreeSet::new());
    for line in catalogue.lines() {
        if let Some(code) = line.strip_prefix("| `").and_then(|l| l.split('`').next()) {
            listed.insert(code.to_owned());
        }
    }
    let stale: Vec<_> = listed.difference(&codes).collect();
    assert!(
        stale.is_empty(),
        "docs/errors.md lists codes nothing returns: {stale:?}"
    );
}

//! The README's two commands share one build: `scripts/demo.sh` builds the `strata` binary
//! (`cargo build -p pipeline --bin strata`), then `scripts/test.sh` builds every test of the
//! workspace. Cargo compiles a crate once per feature set, so a dependency whose features differ
//! between the two (say a dev-dependency that turns on `tokio/test-util`) is compiled twice,
//! and with it everything above it: a newcomer's second command would recompile tokio, polars
//! and object_store for many minutes. This test asks cargo's resolver (`cargo tree`, no build)
//! for both feature sets and requires them to be equal for every crate the binary uses.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

/// `package version -> feature sets` as cargo resolves them for `args` (a crate built both
/// for the host, as a build dependency or proc macro, and for the target can have two).
fn resolved_features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(cargo)
        .current_dir(&root)
        .args(["tree", "--locked", "--offline", "--prefix", "none", "--format", "{p}|{f}"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "cargo tree {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut features: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        // "tokio v1.54.1|bytes,default,..." (a trailing " (*)" marks a repeated subtree).
        let Some((package, set)) = line.split_once('|') else { continue };
        let package = package.split(" (").next().unwrap().trim().to_owned();
        features.entry(package).or_default().insert(set.trim_end_matches(" (*)").trim().to_owned());
    }
    features
}

#[test]
fn the_demo_binary_and_the_test_suite_resolve_the_same_features() {
    let demo = resolved_features(&["-p", "pipeline", "-e", "normal,build"]);
    let tests = resolved_features(&["--workspace", "-e", "normal,build,dev"]);
    assert!(demo.len() > 100, "the binary's dependency tree looks empty: {} crates", demo.len());
    let differing: Vec<String> = demo
        .iter()
        .filter_map(|(package, features)| {
            let other = tests.get(package)?;
            (other != features).then(|| format!("{package}\n  demo:  {features:?}\n  tests: {other:?}"))
        })
        .collect();
    assert!(
        differing.is_empty(),
        "these crates would be compiled twice (once for `scripts/demo.sh`, once more for `scripts/test.sh`); give the \
         dependency the same features everywhere (or drop the extra ones):\n{}",
        differing.join("\n")
    );
}

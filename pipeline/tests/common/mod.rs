//! Helpers shared by the `strata` binary's tests.

#![allow(dead_code)] // each test file uses its own subset
#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// A file under the repository's `data/`.
pub fn data(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data").join(path)
}

/// The `strata` binary, with none of the caller's `STRATA_*` settings leaking in.
pub fn strata_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
    // Every setting (`strata config keys`) and the config file; the cache and log filter stay.
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy().into_owned();
        if var.starts_with("STRATA_") && !["STRATA_CACHE", "STRATA_LOG", "STRATA_WORKSPACE_ROOT"].contains(&var.as_str()) {
            command.env_remove(var);
        }
    }
    command
}

/// Runs `strata` to completion.
pub fn strata(args: &[&str]) -> Output {
    strata_command().args(args).output().unwrap()
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A small random model saved as a real artifact by `strata model init`.
pub fn random_model(dir: &Path, version: &str) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures");
    let model = dir.join("model");
    let config = fixtures.join("tiny-model/config.json");
    let tokenizer = fixtures.join("tokenizer/tokenizer.json");
    let out = strata(&[
        "model",
        "init",
        "--config",
        config.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--random",
        "--model-version",
        version,
        "--device",
        "cpu",
        "--out",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    model
}

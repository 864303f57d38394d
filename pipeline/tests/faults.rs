//! Faults `strata serve` must survive with no result row lost or duplicated, against the real
//! broker (nisshi) on 127.0.0.1: a worker of each role killed with SIGKILL at a random point
//! of a burst of requests and restarted (three runs per role), and the broker cut off for
//! several seconds (a TCP proxy between the workers and the broker closes every connection,
//! then reopens), and the broker process killed and restarted (its log kept on a moto S3
//! server). Workers run as `deploy/local/up.sh` runs them: static group membership
//! (`--instance-id`) and no consumer settings of the tests' own. Groups of several workers
//! are in `groups.rs`.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::time::{Duration, Instant};

use common::{
    cluster::{burst, expected_tiles, files_under, Action, Cluster, Random, BURST},
    count,
};
use strata_e2e::{NisshiBroker, S3Server, TcpProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_each_role_killed_mid_stream_loses_and_duplicates_nothing() {
    let broker = NisshiBroker::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tiles = expected_tiles(work.path());
    assert!(tiles >= 4, "{tiles}");
    let mut cluster = Cluster::new(work.path(), &broker.bootstrap_servers());
    let mut random = Random::from_clock("kill points");

    cluster.submit("warm-up");
    cluster.expect_complete("warm-up", tiles, Duration::from_secs(240));
    // The pace of a burst on this machine, so that kill points fall while one flows.
    let pace = burst(&mut cluster, tiles, "pace", &[]);
    let window = u64::try_from(pace.as_millis()).unwrap_or(u64::MAX).max(500);
    println!("a burst of {BURST} requests takes {pace:?} here");
    let mut requests = 1 + BURST as u64;
    for run in 0..3 {
        for role in ["tile", "infer", "merge"] {
            let at = random.millis(0, window);
            let took = burst(&mut cluster, tiles, &format!("kill-{role}-{run}"), &[(at, Action::Kill(role.to_owned()))]);
            println!("run {run}: SIGKILLed and restarted the {role} worker {at} ms into a burst; complete {took:?} after");
            requests += BURST as u64;
        }
    }
    // Nothing from one request leaked into another, and no row twice anywhere.
    let all = count(&cluster.tables, "SELECT count(*) AS n FROM captions");
    assert_eq!(all, tiles * requests, "{requests} requests, each tile once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_cut_off_for_seconds_mid_stream_loses_and_duplicates_nothing() {
    // Every connection to the broker goes through the proxy: the broker advertises it.
    let proxy = TcpProxy::new().unwrap();
    let broker = NisshiBroker::start_advertising(Some(proxy.addr())).await.unwrap();
    proxy.connect(broker.addr()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tiles = expected_tiles(work.path());
    let mut cluster = Cluster::new(work.path(), &proxy.addr().to_string());

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_and_restarted_mid_stream_loses_and_duplicates_nothing() {
    // The broker keeps its log and the groups' offsets on S3 (moto), so it comes back with them.
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket("nisshi").await.unwrap();
    let mut broker = NisshiBroker::start_on_s3(&s3, "nisshi").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tiles = expected_tiles(work.path());
    let mut cluster = Cluster::new(work.path(), &broker.bootstrap_servers());

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

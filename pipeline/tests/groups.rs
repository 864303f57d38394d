//! Consumer groups of several workers, as users scale them: two infer and two merge workers
//! against the real broker with its log on S3 (moto), with the settings `deploy/local/up.sh`
//! gives its workers (static membership) and those of the Kubernetes Deployments (dynamic). A
//! member of each group is SIGKILLed at a random point of a burst of requests and restarted,
//! at once and after its session has expired; then a third infer worker joins mid-stream, another is SIGKILLed while it joins, and a
//! first one leaves with SIGTERM. Every scene completes and every table holds each tile's rows
//! exactly once. (With tansu 0.6 as the broker, such a group stalled for good:
//! docs/architecture.md, "Consumer groups of several workers".)
//!
//! Its own test binary, so that its clusters do not share the two cores with the other fault
//! tests' (and its two tests take turns).

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::time::Duration;

use common::{
    cluster::{burst, expected_tiles, Action, Cluster, Membership, Random, BURST},
    count,
};
use strata_e2e::{NisshiBroker, S3Server};

/// One cluster at a time: each runs six workers on the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_two_as_the_local_cluster_runs_them_survive_kills_joins_and_leaves() {
    scale_and_kill(Membership::Static, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_of_two_as_the_kubernetes_deployments_run_them_survive_kills_joins_and_leaves() {
    scale_and_kill(Membership::Dynamic, 2).await;
}

/// Kills a member of each group `runs` times, then scales the infer group up and down, all
/// mid-stream; checks every request's rows after each.
async fn scale_and_kill(membership: Membership, runs: usize) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket("nisshi").await.unwrap();
    let broker = NisshiBroker::start_on_s3(&s3, "nisshi").await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let tiles = expected_tiles(work.path());
    assert!(tiles >= 4, "{tiles}");
    let names = ["tile", "infer-1", "infer-2", "merge-1", "merge-2"];
    let mut cluster = Cluster::with_workers(work.path(), &broker.bootstrap_servers(), membership, &names);
    let mut random = Random::from_clock("kill points and victims");

    cluster.submit("warm-up");
    cluster.expect_complete("warm-up", tiles, Duration::from_secs(300));
    // The pace of a burst on this machine, so that kill points fall while one flows.
    let pace = burst(&mut cluster, tiles, "pace", &[]);
    println!("a burst of {BURST} requests takes {pace:?} here");
    let window = u64::try_from(pace.as_millis()).unwrap_or(u64::MAX).max(500);
    let mut requests: Vec<String> = vec!["warm-up".into()];
    requests.extend((0..BURST).map(|i| format!("pace-{i}")));
    for run in 0..runs {
        for group in ["infer", "merge"] {
            // Either member: the group's leader (the first to join) or a follower.
            let victim = format!("{group}-{}", 1 + random.millis(0, 2));
            let at = random.millis(0, window);
            let took = burst(&mut cluster, tiles, &format!("kill-{victim}-{run}"), &[(at, Action::Kill(victim.clone()))]);
            println!("run {run}: SIGKILLed and restarted {victim} {at} ms into a burst; complete {took:?} after the restart");
            requests.extend((0..BURST).map(|i| format!("kill-{victim}-{run}-{i}")));
        }
    }

    // Down for longer than the session (10 s): the group expires the dead member before it is
    // back, as when a pod is rescheduled. Each member in turn, so that one of them is the
    // group's leader. (tansu 0.6 never formed the group again after this, docs/architecture.md.)
    for victim in ["infer-1", "infer-2", "merge-1", "merge-2"] {
        let at = random.millis(0, window);
        let name = format!("down-{victim}");
        let took = burst(&mut cluster, tiles, &name, &[(at, Action::Down(victim.to_owned(), Duration::from_secs(15)))]);
        println!("{victim} SIGKILLed {at} ms into a burst and back 15 s later; complete {took:?} after");
        requests.extend((0..BURST).map(|i| format!("{name}-{i}")));
    }

    // Scaling while requests flow: a third infer worker joins, a member is SIGKILLed while it
    // joins (and restarted), then the first leaves cleanly.
    let (join, kill, leave) = (random.millis(0, window / 2), random.millis(0, 1500), random.millis(0, window / 2));
    let actions =
        [(join, Action::Start("infer-3".into())), (kill, Action::Kill("infer-2".into())), (leave, Action::Terminate("infer-1".into()))];
    let took = burst(&mut cluster, tiles, "scale", &actions);
    println!("scaling: infer-3 joined at {join} ms, infer-2 SIGKILLed {kill} ms later, infer-1 SIGTERMed {leave} ms later; complete {took:?} after");
    requests.extend((0..BURST).map(|i| format!("scale-{i}")));

    // Nothing from one request leaked into another, and no row twice anywhere.
    let all = count(&cluster.tables, "SELECT count(*) AS n FROM captions");
    assert_eq!(all, tiles * requests.len() as u64, "{} requests, each tile once", requests.len());
}

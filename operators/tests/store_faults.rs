//! Object-store faults while a scene is read: transient errors are retried inside the
//! `/vsistrata/` reads and the scene still tiles; errors that persist come out as
//! [`OperatorError::Storage`] classified by the store's error (retryable for an outage,
//! permanent for a missing object) — never as a bad scene.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

mod common;

use std::{
    fmt,
    ops::Range,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use futures::{stream::BoxStream, TryStreamExt as _};
use object_store::{
    memory::InMemory, path::Path, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use operators::{
    tile::{tile_scene, TiledScene, TilerConfig},
    vsi::ReadRetry,
    ErrorClass, OperatorError,
};
use schemas::{SceneRequest, SceneSource, TilingOptions};

/// Which error an injected fault raises.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// What object_store reports for timeouts, resets and 5xx answers.
    Generic,
    /// The object vanished.
    NotFound,
}

/// An in-memory store whose ranged reads (`get_opts` with a range, `get_ranges`) fail after
/// the first `pass` ones, `fail` times in a row; HEAD requests and writes always work.
#[derive(Debug)]
struct FaultStore {
    inner: InMemory,
    pass: usize,
    fail: usize,
    fault: Fault,
    ranged_reads: AtomicUsize,
    failures: AtomicUsize,
    /// While set, writes into a Delta log fail: a writer that stored its data files and dies
    /// before its commit.
    refuse_commits: AtomicBool,
}

impl FaultStore {
    fn new(pass: usize, fail: usize, fault: Fault) -> Self {
        Self {
            inner: InMemory::new(),
            pass,
            fail,
            fault,
            ranged_reads: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
            refuse_commits: AtomicBool::new(false),
        }
    }

    fn check(&self, location: &Path) -> object_store::Result<()> {
        let n = self.ranged_reads.fetch_add(1, Ordering::SeqCst);
        if n < self.pass || n - self.pass >= self.fail {
            return Ok(());
        }
        self.failures.fetch_add(1, Ordering::SeqCst);
        Err(match self.fault {
            Fault::Generic => object_store::Error::Generic { store: "FaultStore", source: "connection reset by peer (injected)".into() },
            Fault::NotFound => object_store::Error::NotFound { path: location.to_string(), source: "gone (injected)".into() },
        })
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
        if self.refuse_commits.load(Ordering::SeqCst) && location.as_ref().contains("_delta_log/") {
            return Err(object_store::Error::Generic {
                store: "FaultStore",
                source: "the writer died before its commit (injected)".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        if options.range.is_some() {
            self.check(location)?;
        }
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, object_store::Result<Path>>) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// Puts the real RMNP scene into `store` and registers it under `faulty://{name}`.
async fn scene_in(name: &str, store: Arc<FaultStore>) -> SceneRequest {
    let bytes = std::fs::read(common::data("scenes/rmnp-rgb.tif")).unwrap();
    store.put(&Path::from("rmnp-rgb.tif"), PutPayload::from(bytes)).await.unwrap();
    storage::register_store(&format!("faulty://{name}"), store).unwrap();
    scene_request(&format!("faulty://{name}/rmnp-rgb.tif"))
}

fn scene_request(uri: &str) -> SceneRequest {
    let mut request = SceneRequest::new("req-faults", "rmnp", SceneSource::Uri { uri: uri.to_owned() });
    request.tiling = TilingOptions { tile_size_px: 128, overlap_px: 16, output_size_px: 64, ..Default::default() };
    request
}

/// Quick retries, so the tests do not wait for the production backoff.
fn config(max_retries: usize) -> TilerConfig {
    TilerConfig { threads: 2, read_retry: ReadRetry { max_retries, min_delay_ms: 1, max_delay_ms: 4 }, ..TilerConfig::default() }
}

async fn tile(request: &SceneRequest, config: &TilerConfig) -> Result<TiledScene, OperatorError> {
    let root = storage::resolve("memory://store-faults/tiles").unwrap();
    tile_scene(request, &root, config, Arc::new(|_| {})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_mid_read_is_retried_and_the_scene_tiles_completely() {
    let reference = tile(&scene_request(common::data("scenes/rmnp-rgb.tif").to_str().unwrap()), &config(0)).await.unwrap();
    // Let the header reads through, then fail three reads in a row.
    let store = Arc::new(FaultStore::new(2, 3, Fault::Generic));
    let request = scene_in("transient", Arc::clone(&store)).await;
    let scene = tile(&request, &config(5)).await.unwrap_or_else(|e| panic!("{e} ({:?})", e.class()));
    assert_eq!(store.failures.load(Ordering::SeqCst), 3, "the faults were injected");
    assert!(scene.summary.tiles_written > 1);
    let ids = |s: &TiledScene| s.tiles.iter().map(|t| t.task.tile_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&scene), ids(&reference), "every tile was written");
    assert_eq!(scene.summary.tiles_skipped_nodata, reference.summary.tiles_skipped_nodata);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_outage_is_a_retryable_storage_error_not_a_bad_scene() {
    // Failing from the first ranged read (GDAL cannot even open the file: "not a raster") and
    // from the middle of the pixels (GDAL reports a read error on a block).
    for pass in [0, 4] {
        let store = Arc::new(FaultStore::new(pass, usize::MAX, Fault::Generic));
        let request = scene_in(&format!("outage-{pass}"), Arc::clone(&store)).await;
        let err = tile(&request, &config(2)).await.unwrap_err();
        assert!(matches!(&err, OperatorError::Storage { source: object_store::Error::Generic { .. }, .. }), "after {pass} reads: {err:?}");
        assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
        assert!(err.to_string().contains("faulty://"), "the message names the object: {err}");
        // Each failed read was tried three times (two retries).
        assert!(store.failures.load(Ordering::SeqCst) >= 3, "{}", store.failures.load(Ordering::SeqCst));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_gone_mid_read_is_permanent() {
    let store = Arc::new(FaultStore::new(4, usize::MAX, Fault::NotFound));
    let request = scene_in("gone", Arc::clone(&store)).await;
    let err = tile(&request, &config(5)).await.unwrap_err();
    assert!(matches!(&err, OperatorError::Storage { source: object_store::Error::NotFound { .. }, .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

/// A finished scene with no tiles answered (its `scenes` row is what the sink writes).
fn finished_scene(scene_id: &str) -> schemas::SceneResults {
    let ring = vec![[-105.6, 40.3], [-105.5, 40.3], [-105.5, 40.4], [-105.6, 40.3]];
    let marker = schemas::SceneTiled {
        schema_version: schemas::SCHEMA_VERSION,
        request_id: "req-commits".into(),
        scene_id: scene_id.into(),
        source_uri: format!("s3://scenes/{scene_id}.tif"),
        width: 100,
        height: 100,
        band_count: 3,
        dtype: "Byte".into(),
        crs_epsg: Some(4326),
        footprint_lonlat: ring.clone(),
        footprint_parts: vec![ring],
        tiles_written: 0,
        tiles_skipped_nodata: 0,
        tasks: Vec::new(),
        submitted_at: chrono::Utc::now(),
        tile_ms: 1.0,
    };
    operators::stages::merge::merge_scene(marker, Vec::new(), Vec::new(), &operators::merge::MergeConfig::default())
}

/// One sink run over one scene (a process of the merge role): whether its commit succeeded.
async fn sink_once(tables: &tables::Tables, scene: schemas::SceneResults) -> bool {
    use operators::stage::{Ack, Collector, Envelope, Position, Stage as _};
    let mut sink = operators::stages::sink::SinkStage::new(tables.clone(), 1).with_max_attempts(1);
    let mut out = Collector::buffer();
    let envelope = Envelope::new(schemas::SinkMessage::Scene(Box::new(scene)), Position::Batch { index: 0 }, Ack::new(|_| {}));
    sink.process(envelope, &mut out).await.is_ok() && out.drain().len() == 1
}

async fn scene_ids(tables: &tables::Tables) -> Vec<String> {
    let frame = tables::query::run(tables, "SELECT scene_id FROM scenes ORDER BY scene_id").await.unwrap();
    let json = tables::query::render(frame, tables::query::OutputFormat::Json, &operators::geometry::Gdal).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    rows.iter().map(|r| r["scene_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_dies_between_its_files_and_its_commit_loses_and_duplicates_nothing() {
    let store = Arc::new(FaultStore::new(usize::MAX, 0, Fault::Generic));
    storage::register_store("faulty://commits", Arc::clone(&store) as Arc<dyn ObjectStore>).unwrap();
    let tables = tables::Tables::new(storage::resolve("faulty://commits/tables").unwrap());
    assert!(sink_once(&tables, finished_scene("a")).await);

    // Scene b's file is stored, its commit is not: b is not in the table, a is untouched.
    store.refuse_commits.store(true, Ordering::SeqCst);
    assert!(!sink_once(&tables, finished_scene("b")).await, "the commit must fail");
    assert_eq!(scene_ids(&tables).await, ["a"]);
    let files = |store: Arc<FaultStore>| async move {
        store
            .list(Some(&Path::from("tables/scenes")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .into_iter()
            .filter(|m| m.location.extension() == Some("parquet"))
            .count()
    };
    assert_eq!(files(Arc::clone(&store)).await, 2, "b's data file was stored before the commit failed");

    // The restarted role replays b: it is committed once, and a second replay adds nothing.
    store.refuse_commits.store(false, Ordering::SeqCst);
    assert!(sink_once(&tables, finished_scene("b")).await);
    assert_eq!(scene_ids(&tables).await, ["a", "b"]);
    assert!(sink_once(&tables, finished_scene("b")).await);
    assert_eq!(scene_ids(&tables).await, ["a", "b"]);

    // Compaction and vacuum: one file holds both rows; the orphan of the dead commit is gone.
    let report =
        tables.compact_table(&schemas::tables::SCENES, 1 << 30, Some(std::time::Duration::ZERO), &operators::geometry::Gdal).await.unwrap();
    assert_eq!(report.files_after, 1, "{report:?}");
    assert_eq!(files(Arc::clone(&store)).await, 1, "{report:?}");
    assert_eq!(scene_ids(&tables).await, ["a", "b"]);
}

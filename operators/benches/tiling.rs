//! Tiling throughput and peak memory on one scene, for `benches/tiling/compare.sh`, which runs
//! it side by side with a rasterio tiler doing the same work.
//!
//! Usage: cargo bench -p operators --bench tiling -- SCENE OUT_DIR [THREADS]
//! Prints one JSON line: source megapixels/s, tiles, seconds, peak RSS.

use std::{sync::Arc, time::Instant};

use operators::tile::{tile_scene, TilerConfig};
use schemas::{SceneRequest, SceneSource};

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [scene, out_dir, rest @ ..] = args.as_slice() else {
        eprintln!("usage: tiling SCENE OUT_DIR [THREADS]  (run through benches/tiling/compare.sh)");
        std::process::exit(2);
    };
    let threads = rest.first().and_then(|t| t.parse().ok()).unwrap_or_else(|| TilerConfig::default().threads);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let summary = runtime.block_on(async {
        let request = SceneRequest::new("bench", "scene", SceneSource::Uri { uri: scene.clone() });
        let root = storage::resolve(out_dir).expect("output dir");
        let config = TilerConfig { threads, ..TilerConfig::default() };
        let started = Instant::now();
        let scene = tile_scene(&request, &root, &config, Arc::new(|_| {})).await.expect("tiling failed");
        (scene.summary, started.elapsed().as_secs_f64())
    });
    let (summary, seconds) = summary;
    let megapixels = (summary.width * summary.height) as f64 / 1e6;
    println!(
        "{}",
        serde_json::json!({
            "tiler": "strata",
            "threads": threads,
            "source_megapixels": megapixels,
            "tiles": summary.tiles_written,
            "seconds": seconds,
            "megapixels_per_second": megapixels / seconds,
            "peak_rss_mib": peak_rss_bytes() as f64 / (1024.0 * 1024.0),
        })
    );
}

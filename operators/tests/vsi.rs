//! GDAL reads objects through `/vsistrata/`, from any store, by ranges.

use gdal::{Dataset, DatasetOptions, GdalOpenFlags};
use operators::vsi::VsiFile;

fn data(path: &str) -> String {
    format!("{}/../data/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn open(path: &str) -> gdal::errors::Result<Dataset> {
    let options = DatasetOptions {
        open_flags: GdalOpenFlags::GDAL_OF_RASTER | GdalOpenFlags::GDAL_OF_READONLY | GdalOpenFlags::GDAL_OF_VERBOSE_ERROR,
        ..Default::default()
    };
    Dataset::open_ex(path, options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdal_opens_local_and_memory_objects_through_the_handler() {
    for _ in 0..3 {
        let location = storage::resolve(&data("scenes/rmnp-rgb.tif")).unwrap();
        let file = VsiFile::open(&location).await.unwrap();
        let path = file.path().to_owned();
        let size = tokio::task::spawn_blocking(move || open(&path).map(|d| d.raster_size())).await.unwrap();
        assert_eq!(size.unwrap(), (485, 373));
        assert!(file.bytes_fetched() > 0);
    }
}

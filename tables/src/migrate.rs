//! From the layout before Delta Lake (one GeoParquet file per scene and table, and
//! `_index/request=…/{scene}.json` records of what each scene wrote) to Delta tables. Each
//! table's migration is one Delta commit that adds every file of the table with its statistics,
//! so no row is lost or duplicated, and a migration stopped part-way is finished by running it
//! again (a table with a log is already migrated). Files stay where they are, except those with
//! unsigned 64-bit columns (`tiles`, `scenes`), which Delta readers cannot take as `long`: they
//! are rewritten with signed columns beside the old ones, which are deleted after the commit.

use deltalake_core::kernel::{Action, Add};
use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, PutPayload};
use schemas::tables::TableSchema;

use crate::{delta, DataFile, GeometryReader, TableError, Tables};

/// What a migration did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Table name.
    pub table: &'static str,
    /// Files added to the new table (0 when it was already a Delta table or empty).
    pub files: usize,
    /// Rows those files hold.
    pub rows: u64,
    /// Whether the table already had a Delta log.
    pub already: bool,
}

impl Tables {
    /// Whether `table` is in the layout before Delta: no log, and files in `date=…` folders.
    ///
    /// # Errors
    /// When the store cannot be listed.
    pub async fn is_old_layout(&self, table: &TableSchema) -> Result<bool, TableError> {
        let folder = self.root().join(table.name);
        let listed = folder
            .store()
            .list_with_delimiter(Some(folder.path()))
            .await
            .map_err(|source| TableError::Storage { uri: folder.url(), source })?;
        let names: Vec<&str> = listed.common_prefixes.iter().filter_map(|p| p.filename()).collect();
        Ok(!names.contains(&"_delta_log") && names.iter().any(|n| n.starts_with("date=")))
    }

    /// The error readers give for a table in the old layout.
    pub(crate) fn old_layout_error(&self, table: &TableSchema) -> TableError {
        TableError::Query {
            reason: format!(
                "`{}` holds result files in the layout before Delta Lake tables (one file per scene, no `_delta_log`); run `strata tables migrate --tables {}` once to turn them into tables",
                self.root().join(table.name).url(),
                self.root().url()
            ),
        }
    }

    /// Migrates every table of [`schemas::tables::ALL`] (see the module docs), then removes
    /// the old `_index/` records. `progress` is called after each table.
    ///
    /// # Errors
    /// Store failures, unreadable files (named), and a commit that fails; tables migrated
    /// before the failure stay migrated.
    pub async fn migrate(&self, geometry: &dyn GeometryReader, mut progress: impl FnMut(&Migrated)) -> Result<Vec<Migrated>, TableError> {
        let mut done = Vec::new();
        for table in schemas::tables::ALL {
            let migrated = self.migrate_table(table, geometry).await?;
            progress(&migrated);
            done.push(migrated);
        }
        let index = self.root().join("_index");
        let stale: Vec<_> = index
            .store()
            .list(Some(index.path()))
            .try_collect()
            .await
            .map_err(|source| TableError::Storage { uri: index.url(), source })?;
        for meta in stale {
            let at = index.with_path(meta.location);
            match at.store().delete(at.path()).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(TableError::Storage { uri: at.url(), source }),
            }
        }
        Ok(done)
    }

    async fn migrate_table(&self, table: &'static TableSchema, geometry: &dyn GeometryReader) -> Result<Migrated, TableError> {
        if self.open(table).await?.is_some() {
            return Ok(Migrated { table: table.name, files: 0, rows: 0, already: true });
        }
        let folder = self.root().join(table.name);
        let mut files: Vec<_> = folder
            .store()
            .list(Some(folder.path()))
            .try_filter(|m| std::future::ready(m.location.extension() == Some("parquet")))
            .try_collect()
            .await
            .map_err(|source| TableError::Storage { uri: folder.url(), source })?;
        files.sort_by(|a, b| a.location.cmp(&b.location));
        if files.is_empty() {
            return Ok(Migrated { table: table.name, files: 0, rows: 0, already: false });
        }
        // Every file is read and checked before anything is written: the table and its files
        // then appear in one first version, or not at all.
        let prefix = format!("{}/", folder.path());
        let mut actions = Vec::with_capacity(files.len());
        let mut rows = 0;
        // Old files rewritten with signed columns: deleted once the new ones are committed.
        let mut replaced = Vec::new();
        for meta in &files {
            let relative = meta.location.as_ref().strip_prefix(&prefix).unwrap_or(meta.location.as_ref()).to_owned();
            let frame = self.read_file(table, &relative, None).await?;
            let names: Vec<&str> = frame.get_column_names().into_iter().map(|n| n.as_str()).collect();
            let expected: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
            if names != expected {
                return Err(TableError::Migration {
                    reason: format!(
                        "`{}` is not a file of the `{}` table: its columns are {names:?}, the table's are {expected:?}; move it elsewhere and migrate again (nothing of this table was migrated)",
                        folder.join(&relative).url(),
                        table.name
                    ),
                });
            }
            rows += frame.height() as u64;
            if frame.columns().iter().any(|c| c.dtype() == &polars::prelude::DataType::UInt64) {
                let mut frame = frame;
                let mut parts = relative.split('/');
                let date =
                    parts.next().and_then(|d| d.strip_prefix("date=")).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
                let in_folder = parts.next().filter(|p| !p.ends_with(".parquet")).unwrap_or("migrated").to_owned();
                let stem = relative.rsplit('/').next().and_then(|n| n.strip_suffix(".parquet")).unwrap_or("migrated").to_owned();
                let file = DataFile::encode(table, &mut frame, geometry, date.unwrap_or_default(), &in_folder, &stem)?;
                let at = folder.join(&file.path);
                at.store()
                    .put(at.path(), PutPayload::from(file.bytes.clone()))
                    .await
                    .map_err(|source| TableError::Storage { uri: at.url(), source })?;
                actions.push(Action::Add(Add {
                    path: file.path.clone(),
                    size: i64::try_from(file.bytes.len()).unwrap_or(i64::MAX),
                    modification_time: chrono::Utc::now().timestamp_millis(),
                    data_change: true,
                    stats: Some(file.stats),
                    ..Default::default()
                }));
                replaced.push(relative);
                continue;
            }
            actions.push(Action::Add(Add {
                path: relative,
                size: i64::try_from(meta.size).unwrap_or(i64::MAX),
                modification_time: meta.last_modified.timestamp_millis(),
                data_change: true,
                stats: Some(delta::statistics(table, &frame)),
                ..Default::default()
            }));
        }
        self.create(table, actions)?.await.map_err(|source| TableError::Delta {
            table: table.name.to_owned(),
            action: "committing the migration".to_owned(),
            source: Box::new(source),
        })?;
        for relative in replaced {
            let at = folder.join(&relative);
            match at.store().delete(at.path()).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(TableError::Storage { uri: at.url(), source }),
            }
        }
        Ok(Migrated { table: table.name, files: files.len(), rows, already: false })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use object_store::{ObjectStoreExt as _, PutPayload};

    use crate::{frames::Cell, query, test_support::NoGeometry, Tables};

    fn caption_row(scene: &str, tile: &str) -> Vec<Cell> {
        let at = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time");
        vec![
            "r1".into(),
            scene.into(),
            tile.into(),
            "caption".into(),
            "m-1".into(),
            "a harbour".into(),
            0.5f32.into(),
            Cell::List(Vec::new()),
            0u32.into(),
            Cell::Time(at),
            Cell::Date(at.date_naive()),
        ]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_old_layout_is_refused_then_migrated_in_place_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tables = Tables::new(storage::resolve(dir.path().to_str().expect("utf-8")).expect("root"));
        // Two scenes as the sink wrote them before Delta: one file each, and an index record.
        for (scene, tiles) in [("s1", 2), ("s2", 3)] {
            let rows: Vec<_> = (0..tiles).map(|t| caption_row(scene, &format!("t{t}"))).collect();
            let mut frame = crate::frames::frame(&schemas::tables::CAPTIONS, &rows).expect("frame");
            let bytes = crate::geoparquet::encode(&schemas::tables::CAPTIONS, &mut frame, &NoGeometry).expect("encode");
            let at = tables.root().join(&format!("captions/date=2026-03-01/request=r1/{scene}.parquet"));
            at.store().put(at.path(), PutPayload::from(bytes)).await.expect("put");
            let index = tables.root().join(&format!("_index/request=r1/{scene}.json"));
            index.store().put(index.path(), PutPayload::from(b"{}".to_vec())).await.expect("put");
        }
        // A tile row: its unsigned 64-bit offsets make the file one Delta readers refuse.
        let at = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time");
        let tile: Vec<Cell> = vec![
            "r1".into(),
            "s1".into(),
            "t0".into(),
            "s3://tiles/t0.png".into(),
            Cell::U64(512),
            Cell::U64(1024),
            512u32.into(),
            512u32.into(),
            256u32.into(),
            "GEOGCS[\"WGS 84\"]".into(),
            Cell::Null,
            "[0,1,0,0,0,-1]".into(),
            Cell::Geometry(vec![1, 3, 0, 0, 0, 0, 0, 0, 0]),
            1.0f32.into(),
            Cell::Time(at),
            Cell::Date(at.date_naive()),
        ];
        let mut frame = crate::frames::frame(&schemas::tables::TILES, &[tile]).expect("frame");
        let bytes = crate::geoparquet::encode(&schemas::tables::TILES, &mut frame, &NoGeometry).expect("encode");
        let old_tile = tables.root().join("tiles/date=2026-03-01/request=r1/s1.parquet");
        old_tile.store().put(old_tile.path(), PutPayload::from(bytes)).await.expect("put");
        let refused = query::run(&tables, "SELECT count(*) AS n FROM captions").await.expect_err("old layout");
        assert!(refused.to_string().contains("strata tables migrate"), "{refused}");
        // A writer is refused too: a table created over the old files would hide them.
        let mut frame = crate::frames::frame(&schemas::tables::CAPTIONS, &[caption_row("s3", "t0")]).expect("frame");
        let date = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).expect("date");
        let file = crate::DataFile::encode(&schemas::tables::CAPTIONS, &mut frame, &NoGeometry, date, "request=r1", "s3").expect("encode");
        let commit = crate::Commit { files: vec![file], replaces: vec![("r1".to_owned(), "s3".to_owned())] };
        let refused = tables.commit(&commit, &NoGeometry).await.expect_err("a write to the old layout");
        assert!(refused.to_string().contains("strata tables migrate"), "{refused}");

        // A file that is not the table's stops that table's migration before anything is
        // written: the old layout stays as it was, and migrating again after removing it works.
        let foreign = tables.root().join("captions/date=2026-03-01/request=r1/foreign.parquet");
        let mut other = polars::df!("a" => [1, 2, 3]).expect("frame");
        let mut bytes = Vec::new();
        polars::prelude::ParquetWriter::new(&mut bytes).finish(&mut other).expect("parquet");
        foreign.store().put(foreign.path(), PutPayload::from(bytes)).await.expect("put");
        let failed = tables.migrate(&NoGeometry, |_| {}).await.expect_err("a foreign file");
        assert!(failed.to_string().contains("foreign.parquet"), "{failed}");
        assert!(tables.open(&schemas::tables::CAPTIONS).await.expect("open").is_none(), "no table was created");
        assert!(query::run(&tables, "SELECT count(*) AS n FROM captions").await.is_err(), "still the old layout");
        foreign.store().delete(foreign.path()).await.expect("delete");

        let migrated = tables.migrate(&NoGeometry, |_| {}).await.expect("migrate");
        let captions = migrated.iter().find(|m| m.table == "captions").expect("captions");
        assert_eq!((captions.files, captions.rows, captions.already), (2, 5, false));
        let count = |sql: &'static str| {
            let tables = tables.clone();
            async move { query::run(&tables, sql).await.expect("query").column("n").expect("n").u32().expect("u32").get(0) }
        };
        assert_eq!(count("SELECT count(*) AS n FROM captions").await, Some(5));
        assert_eq!(count("SELECT count(*) AS n FROM captions WHERE scene_id = 's2'").await, Some(3));
        assert!(!dir.path().join("_index").join("request=r1").join("s1.json").exists(), "the old index is removed");
        // The tile file was rewritten with signed offsets, the old one removed.
        let offsets = query::run(&tables, "SELECT col_off, row_off FROM tiles").await.expect("tiles");
        assert_eq!(offsets.column("col_off").expect("col_off").dtype(), &polars::prelude::DataType::Int64);
        assert_eq!(offsets.column("row_off").expect("row_off").i64().expect("i64").get(0), Some(1024));
        assert!(!dir.path().join("tiles/date=2026-03-01/request=r1/s1.parquet").exists(), "the unsigned file is gone");

        // Again: nothing is added twice.
        let again = tables.migrate(&NoGeometry, |_| {}).await.expect("migrate again");
        assert!(again.iter().find(|m| m.table == "captions").expect("captions").already);
        assert_eq!(count("SELECT count(*) AS n FROM captions").await, Some(5));
    }
}

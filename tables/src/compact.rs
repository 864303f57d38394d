//! Compaction and vacuum of the result tables (Delta Lake's `OPTIMIZE` bin-packing and
//! `VACUUM`, written here because delta-rs's own need DataFusion). The sink writes one small
//! file per scene and table; compaction rewrites the small files of each date into files near
//! a target size, in transactions that remove the small files and add the large one
//! (`dataChange: false`: readers see the same rows before and after). A compaction that races
//! a commit removing one of its files (a rerun replacing a scene) fails that bin's
//! transaction, and nothing changes; the next compaction picks the files up again. Vacuum
//! deletes the files no version younger than the retention period still references, and
//! files no commit ever referenced (a writer killed between storing a file and committing it)
//! once they are older than the retention period.

use std::collections::BTreeMap;

use deltalake_core::{
    kernel::{
        transaction::{CommitBuilder, CommitProperties},
        Action, Add, Remove,
    },
    operations::vacuum::VacuumMode,
    protocol::DeltaOperation,
};
use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, PutPayload};
use polars::prelude::{concat, IntoLazy, UnionArgs};
use schemas::tables::TableSchema;

use crate::{delta::DataFile, GeometryReader, TableError, Tables};

/// The size compaction aims for, bytes (Delta's and Spark's `OPTIMIZE` default).
pub const DEFAULT_TARGET_BYTES: u64 = 128 * 1024 * 1024;

/// How long removed files are kept for readers of older versions (Delta's default,
/// `delta.deletedFileRetentionDuration`, 7 days).
pub const DEFAULT_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What compaction and vacuum did to one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Table name.
    pub table: &'static str,
    /// Live files before.
    pub files_before: usize,
    /// Live files after.
    pub files_after: usize,
    /// Files written by compaction.
    pub written: usize,
    /// Bins (or a vacuum) that lost a race with another writer, left for next time.
    pub conflicts: usize,
    /// Files vacuum deleted.
    pub vacuumed: usize,
}

impl Tables {
    /// Compacts every table of [`schemas::tables::ALL`] ([`Tables::compact_table`]).
    ///
    /// # Errors
    /// As [`Tables::compact_table`].
    pub async fn compact(
        &self,
        target_bytes: u64,
        retention: Option<std::time::Duration>,
        geometry: &dyn GeometryReader,
        mut progress: impl FnMut(&Compacted),
    ) -> Result<Vec<Compacted>, TableError> {
        let mut done = Vec::new();
        for table in schemas::tables::ALL {
            let compacted = self.compact_table(table, target_bytes, retention, geometry).await?;
            progress(&compacted);
            done.push(compacted);
        }
        Ok(done)
    }

    /// Rewrites the files of `table` smaller than half of `target_bytes` into files of about
    /// `target_bytes` (bin-packed per date, in path order), one transaction per new file, then,
    /// with `retention`, vacuums what no version younger than it references.
    ///
    /// # Errors
    /// Store, Parquet and log errors (a lost race is counted, not an error).
    pub async fn compact_table(
        &self,
        table: &'static TableSchema,
        target_bytes: u64,
        retention: Option<std::time::Duration>,
        geometry: &dyn GeometryReader,
    ) -> Result<Compacted, TableError> {
        let mut report = Compacted { table: table.name, ..Compacted::default() };
        let Some(delta) = self.open(table).await? else {
            if self.is_old_layout(table).await? {
                return Err(self.old_layout_error(table));
            }
            return Ok(report);
        };
        let delta_err = |action: &str| {
            let action = action.to_owned();
            move |source| TableError::Delta { table: table.name.to_owned(), action, source: Box::new(source) }
        };
        let views: Vec<_> = delta.get_active_add_actions_by_predicate(None).try_collect().await.map_err(delta_err("listing files"))?;
        report.files_before = views.len();
        // Small files per date; a file's date is its folder's (every file holds one date).
        let mut small: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for view in &views {
            let size = u64::try_from(view.size()).unwrap_or(0);
            let path = view.path().into_owned();
            if size < target_bytes / 2 {
                let date = path.split('/').next().filter(|d| d.starts_with("date=")).unwrap_or("").to_owned();
                small.entry(date).or_default().push((path, size));
            }
        }
        let mut bins = Vec::new();
        for (date, mut files) in small {
            files.sort();
            let mut bin: Vec<(String, u64)> = Vec::new();
            for file in files {
                if !bin.is_empty() && bin.iter().map(|(_, s)| s).sum::<u64>() + file.1 > target_bytes {
                    bins.push((date.clone(), std::mem::take(&mut bin)));
                }
                bin.push(file);
            }
            bins.push((date, bin));
        }
        let snapshot = delta.snapshot().map_err(delta_err("reading the log"))?;
        for (date, bin) in bins.into_iter().filter(|(_, bin)| bin.len() > 1) {
            let mut frames = Vec::with_capacity(bin.len());
            for (path, _) in &bin {
                frames.push(self.read_file(table, path, None).await?.lazy());
            }
            let frame = concat(&frames, UnionArgs { to_supertypes: true, ..UnionArgs::default() })
                .and_then(|lazy| lazy.collect())
                .map_err(|source| TableError::Frame { table: table.name.to_owned(), action: "compacting".to_owned(), source })?;
            let day = chrono::NaiveDate::parse_from_str(date.trim_start_matches("date="), "%Y-%m-%d").unwrap_or_default();
            let mut frame = frame;
            let file = DataFile::encode(table, &mut frame, geometry, day, "compacted", "part")?;
            let at = self.root().join(table.name).join(&file.path);
            at.store()
                .put(at.path(), PutPayload::from(file.bytes.clone()))
                .await
                .map_err(|source| TableError::Storage { uri: at.url(), source })?;
            let now = chrono::Utc::now().timestamp_millis();
            let mut actions: Vec<Action> = bin
                .iter()
                .map(|(path, size)| {
                    Action::Remove(Remove {
                        path: path.clone(),
                        data_change: false,
                        deletion_timestamp: Some(now),
                        size: i64::try_from(*size).ok(),
                        extended_file_metadata: Some(true),
                        ..Default::default()
                    })
                })
                .collect();
            actions.push(Action::Add(Add {
                path: file.path.clone(),
                size: i64::try_from(file.bytes.len()).unwrap_or(i64::MAX),
                modification_time: now,
                data_change: false,
                stats: Some(file.stats.clone()),
                ..Default::default()
            }));
            let operation =
                DeltaOperation::Optimize { predicate: Some(date.clone()), target_size: i64::try_from(target_bytes).unwrap_or(i64::MAX) };
            let committed = CommitBuilder::from(CommitProperties::default())
                .with_actions(actions)
                .build(Some(snapshot), delta.log_store(), operation)
                .await;
            match committed {
                Ok(_) => report.written += 1,
                Err(error) => {
                    tracing::warn!(table = table.name, %date, %error, "A compaction lost a race with another writer; its files stay as they are.");
                    report.conflicts += 1;
                    // The file is referenced by no commit: remove it now rather than at vacuum.
                    let _ = at.store().delete(at.path()).await;
                }
            }
        }
        if let Some(retention) = retention {
            let delta =
                self.open(table).await?.ok_or_else(|| TableError::Internal { reason: format!("table `{}` vanished", table.name) })?;
            let period = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
            let vacuum =
                || delta.clone().vacuum().with_retention_period(period).with_enforce_retention_duration(false).with_mode(VacuumMode::Full);
            // A dry run first: a vacuum with nothing to delete would still add two versions.
            let (_, due) = vacuum().with_dry_run(true).await.map_err(delta_err("vacuuming"))?;
            if !due.files_deleted.is_empty() {
                match vacuum().await {
                    Ok((_, metrics)) => report.vacuumed = metrics.files_deleted.len(),
                    // Vacuum records its start and end in the log; a writer committing between
                    // them makes it fail, and the files it did not delete wait for next time.
                    Err(error) => {
                        tracing::warn!(table = table.name, %error, "Vacuum raced another writer; what it left is deleted next time.");
                        report.conflicts += 1;
                    }
                }
            }
        }
        let delta = self.open(table).await?;
        if let Some(delta) = delta {
            report.files_after =
                delta.get_active_add_actions_by_predicate(None).try_collect::<Vec<_>>().await.map_err(delta_err("listing files"))?.len();
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use crate::{delta::DataFile, frames::Cell, query, test_support::NoGeometry, Commit, Tables};

    /// A scene's captions as the sink commits them: `tiles` rows, replacing its earlier ones.
    fn scene(scene: &str, tiles: usize, caption: &str) -> Commit {
        let at = chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).single().expect("time");
        let rows: Vec<Vec<Cell>> = (0..tiles)
            .map(|t| {
                vec![
                    "r1".into(),
                    scene.into(),
                    format!("t{t}").into(),
                    "caption".into(),
                    "m-1".into(),
                    caption.into(),
                    0.5f32.into(),
                    Cell::List(Vec::new()),
                    0u32.into(),
                    Cell::Time(at),
                    Cell::Date(at.date_naive()),
                ]
            })
            .collect();
        let mut frame = crate::frames::frame(&schemas::tables::CAPTIONS, &rows).expect("frame");
        let file =
            DataFile::encode(&schemas::tables::CAPTIONS, &mut frame, &NoGeometry, at.date_naive(), "request=r1", scene).expect("encode");
        Commit { files: vec![file], replaces: vec![("r1".to_owned(), scene.to_owned())] }
    }

    async fn count(tables: &Tables, sql: &str) -> Option<u32> {
        query::run(tables, sql).await.expect("query").column("n").expect("n").u32().expect("u32").get(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_keeps_every_row_and_a_rerun_still_replaces_a_compacted_scene() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tables = Tables::new(storage::resolve(dir.path().to_str().expect("utf-8")).expect("root"));
        for s in 0..6 {
            tables.commit(&scene(&format!("s{s}"), 3, "before"), &NoGeometry).await.expect("commit");
        }
        // A replay of a committed scene adds no version and no row.
        let version = tables.open(&schemas::tables::CAPTIONS).await.expect("open").expect("table").version();
        tables.commit(&scene("s0", 3, "before"), &NoGeometry).await.expect("replay");
        assert_eq!(
            tables.open(&schemas::tables::CAPTIONS).await.expect("open").expect("table").version(),
            version,
            "a replay commits nothing"
        );
        assert_eq!(count(&tables, "SELECT count(*) AS n FROM captions").await, Some(18));

        let report = tables.compact_table(&schemas::tables::CAPTIONS, 1 << 20, None, &NoGeometry).await.expect("compact");
        assert_eq!((report.files_before, report.files_after, report.written, report.conflicts), (6, 1, 1, 0), "{report:?}");
        assert_eq!(count(&tables, "SELECT count(*) AS n FROM captions").await, Some(18));
        assert_eq!(count(&tables, "SELECT count(*) AS n FROM captions WHERE scene_id = 's4'").await, Some(3));

        // A rerun of s2 with fewer tiles: the compacted file is rewritten without s2's rows.
        tables.commit(&scene("s2", 2, "after"), &NoGeometry).await.expect("rerun");
        assert_eq!(count(&tables, "SELECT count(*) AS n FROM captions").await, Some(17));
        assert_eq!(count(&tables, "SELECT count(*) AS n FROM captions WHERE scene_id = 's2' AND caption = 'after'").await, Some(2));
        assert_eq!(count(&tables, "SELECT count(*) AS n FROM captions WHERE caption = 'before'").await, Some(15));

        // Vacuum with no retention deletes the files no longer referenced; rows stay.
        let report =
            tables.compact_table(&schemas::tables::CAPTIONS, 1 << 20, Some(std::time::Duration::ZERO), &NoGeometry).await.expect("vacuum");
        assert!(report.vacuumed >= 7, "{report:?}");
        assert_eq!(report.files_after, 1, "{report:?}");
        assert_eq!(count(&tables, "SELECT count(*) AS n FROM captions").await, Some(17));
    }
}

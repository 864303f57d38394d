//! The result tables as Delta Lake tables (delta-rs on Strata's own object stores). Each table
//! of [`schemas::tables::ALL`] is a Delta table at `{root}/{table}/`: `_delta_log/` holds its
//! transactions, data files stay GeoParquet 1.1 under `date={YYYY-MM-DD}/request={id}/`, named
//! by their content (`{scene}-{sha256 prefix}.parquet`). `date` is an ordinary column with
//! per-file statistics rather than a Delta partition column, so every data file remains a
//! complete GeoParquet file that any reader opens alone; a date filter still skips files,
//! because every file holds one date.
//!
//! Writes follow Delta's protocol (PROTOCOL.md, "Add File and Remove File"): a commit adds the
//! new files and removes the files holding the rows it replaces, in one atomic log entry, so a
//! reader sees all of a commit or none of it. Replacing a scene's rows removes every file whose
//! statistics say it may hold them (a file holding other scenes too, after compaction, is
//! rewritten without them). Because files are named by content, a replay of a commit that is
//! already in the log finds its files there and commits nothing.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use chrono::NaiveDate;
use delta_kernel::expressions::{Expression, Predicate};
/// delta-rs' error, for callers that classify [`TableError::Delta`].
pub use deltalake_core::DeltaTableError;
use deltalake_core::{
    kernel::{
        transaction::{CommitBuilder, CommitProperties},
        Action, Add, ArrayType, DataType, Remove, StructField,
    },
    logstore::{default_logstore, LogStoreRef, StorageConfig},
    protocol::{DeltaOperation, SaveMode},
    DeltaTable,
};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::{prefix::PrefixStore, ObjectStoreExt, PutPayload};
use polars::prelude::{AnyValue, DataFrame, DataType as PolarsType, ParquetReader, SerReader};
use schemas::tables::{ColumnType, TableSchema};
use sha2::{Digest as _, Sha256};

use crate::{GeometryReader, TableError, Tables};

/// The longest string that goes whole into a file's statistics, except in the columns of the
/// table's key (ids, which replacing a scene looks up and which always get exact bounds).
/// Longer text (captions, answers) is truncated to this many characters ([`string_bound`]),
/// which keeps the log small.
const MAX_STRING_STAT: usize = 32;

/// One encoded data file of a table, ready to store and commit.
#[derive(Debug, Clone)]
pub struct DataFile {
    /// The table it belongs to.
    pub table: &'static TableSchema,
    /// Path below the table's folder, e.g. `date=2026-01-01/request=r1/s1-0a1b2c3d4e5f6a7b.parquet`.
    pub path: String,
    /// The GeoParquet bytes.
    pub bytes: Vec<u8>,
    /// Delta statistics (`numRecords`, `minValues`, `maxValues`, `nullCount`) as JSON.
    pub stats: String,
}

impl DataFile {
    /// Encodes `frame` (rows of `table` for one date) as GeoParquet and names the file by its
    /// content: `date={date}/{folder}/{stem}-{16 hex digits of its SHA-256}.parquet`.
    ///
    /// # Errors
    /// When the frame does not match the table schema.
    pub fn encode(
        table: &'static TableSchema,
        frame: &mut DataFrame,
        geometry: &dyn GeometryReader,
        date: NaiveDate,
        folder: &str,
        stem: &str,
    ) -> Result<Self, TableError> {
        to_delta_types(table, frame)?;
        let stats = statistics(table, frame);
        let bytes = crate::geoparquet::encode(table, frame, geometry)?;
        let digest = Sha256::digest(&bytes);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let path = format!("date={}/{folder}/{stem}-{hex}.parquet", date.format("%Y-%m-%d"));
        Ok(Self { table, path, bytes, stats })
    }

    /// The `(request_id, scene_id)` of its rows, when they all belong to one scene.
    pub fn scene(&self) -> Option<(String, String)> {
        single_scene(Some(&self.stats))
    }
}

/// What one commit writes: rows to add, and the scenes whose earlier rows they replace.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// New data files (any tables).
    pub files: Vec<DataFile>,
    /// `(request_id, scene_id)` of scenes whose earlier rows, in every table, are replaced.
    pub replaces: Vec<(String, String)>,
}

/// The Delta type of a column. Delta has no unsigned integers: they are `long` (readers cast
/// the files' unsigned columns, which never exceed `i64::MAX` here).
fn delta_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Utf8 => DataType::STRING,
        ColumnType::Bool => DataType::BOOLEAN,
        ColumnType::UInt32 | ColumnType::UInt64 | ColumnType::Int64 => DataType::LONG,
        ColumnType::Float32 => DataType::FLOAT,
        ColumnType::Float64 => DataType::DOUBLE,
        ColumnType::TimestampMicros => DataType::TIMESTAMP,
        ColumnType::Date => DataType::DATE,
        ColumnType::GeometryWkb => DataType::BINARY,
        ColumnType::ListUtf8 => DataType::Array(Box::new(ArrayType::new(DataType::STRING, true))),
    }
}

/// Casts the columns whose type Delta lacks to the one the table declares: `UInt64` becomes
/// `Int64` (`long`), since readers refuse to narrow an unsigned 64-bit column into it (polars'
/// `read_delta` does); `UInt32` widens into `long` safely and stays as it is.
///
/// # Errors
/// Only when polars cannot cast (a value over `i64::MAX`, which no table holds).
pub(crate) fn to_delta_types(table: &TableSchema, frame: &mut DataFrame) -> Result<(), TableError> {
    let unsigned: Vec<String> = frame.columns().iter().filter(|c| c.dtype() == &PolarsType::UInt64).map(|c| c.name().to_string()).collect();
    for name in unsigned {
        let cast = frame
            .column(&name)
            .and_then(|c| c.strict_cast(&PolarsType::Int64))
            .map_err(frame_err(table, &format!("casting `{name}` to a signed integer")))?;
        frame.with_column(cast).map_err(frame_err(table, "casting columns"))?;
    }
    Ok(())
}

/// A bound for a string column: the value itself, or for a long one (over `limit`
/// characters) its prefix, raised by one in its last character for an upper bound, so the
/// bound still holds every value (as Spark and delta-rs truncate string statistics).
fn string_bound(value: &str, limit: usize, upper: bool) -> Option<serde_json::Value> {
    if value.chars().count() <= limit {
        return Some(value.into());
    }
    let mut prefix: Vec<char> = value.chars().take(limit).collect();
    if upper {
        let last = prefix.pop()?;
        prefix.push(char::from_u32(u32::from(last) + 1)?);
    }
    Some(prefix.into_iter().collect::<String>().into())
}

/// Delta statistics of a frame (PROTOCOL.md "Per-file Statistics"): row count, and for every
/// column but geometries and lists its minimum, maximum and null count. Strings in the table's
/// key (ids, which replacing a scene looks up) are exact; other strings over
/// [`MAX_STRING_STAT`] characters are truncated ([`string_bound`]); timestamps are rounded
/// out to milliseconds, as the protocol writes them. Floats holding NaN get no bounds.
pub(crate) fn statistics(table: &TableSchema, frame: &DataFrame) -> String {
    let (mut min, mut max, mut nulls) = (serde_json::Map::new(), serde_json::Map::new(), serde_json::Map::new());
    for spec in table.columns {
        let Ok(column) = frame.column(spec.name) else { continue };
        let series = column.as_materialized_series();
        let limit = if table.key.contains(&spec.name) { usize::MAX } else { MAX_STRING_STAT };
        let json = |value: AnyValue, upper: bool| -> Option<serde_json::Value> {
            match value {
                AnyValue::String(s) => string_bound(s, limit, upper),
                AnyValue::StringOwned(s) => string_bound(s.as_str(), limit, upper),
                AnyValue::UInt32(v) => Some(v.into()),
                AnyValue::UInt64(v) => Some(v.into()),
                AnyValue::Int32(v) => Some(v.into()),
                AnyValue::Int64(v) => Some(v.into()),
                AnyValue::Float32(v) if v.is_finite() => Some(f64::from(v).into()),
                AnyValue::Float64(v) if v.is_finite() => Some(v.into()),
                AnyValue::Date(days) => {
                    NaiveDate::from_num_days_from_ce_opt(days + 719_163).map(|d| d.format("%Y-%m-%d").to_string().into())
                }
                AnyValue::Datetime(micros, polars::prelude::TimeUnit::Microseconds, _)
                | AnyValue::DatetimeOwned(micros, polars::prelude::TimeUnit::Microseconds, _) => {
                    let millis =
                        if upper { micros.div_euclid(1000) + i64::from(micros.rem_euclid(1000) != 0) } else { micros.div_euclid(1000) };
                    chrono::DateTime::from_timestamp_millis(millis).map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().into())
                }
                _ => None,
            }
        };
        let has_nan =
            matches!(series.dtype(), PolarsType::Float32 | PolarsType::Float64) && series.is_nan().map(|nan| nan.any()).unwrap_or(true);
        // A null count goes with bounds, or says the column is all null: a null count alone
        // makes some readers (deltalake-python's pyarrow dataset) rule the file out for any
        // filter on the column.
        let all_null = series.null_count() == series.len();
        if all_null && !matches!(spec.ty, ColumnType::GeometryWkb | ColumnType::ListUtf8) {
            nulls.insert(spec.name.to_owned(), series.null_count().into());
        }
        if has_nan || all_null {
            continue;
        }
        let bound = |scalar: polars::prelude::PolarsResult<polars::prelude::Scalar>, upper: bool| {
            scalar.ok().and_then(|s| json(s.value().clone(), upper))
        };
        if let (Some(lo), Some(hi)) = (bound(series.min_reduce(), false), bound(series.max_reduce(), true)) {
            min.insert(spec.name.to_owned(), lo);
            max.insert(spec.name.to_owned(), hi);
            nulls.insert(spec.name.to_owned(), series.null_count().into());
        }
    }
    serde_json::json!({ "numRecords": frame.height(), "minValues": min, "maxValues": max, "nullCount": nulls }).to_string()
}

/// The error of a Delta operation on `table`.
fn delta_err(table: &TableSchema, action: &str) -> impl FnOnce(DeltaTableError) -> TableError {
    let (table, action) = (table.name.to_owned(), action.to_owned());
    move |source| TableError::Delta { table, action, source: Box::new(source) }
}

/// `request_id = R AND scene_id = S` for any of `scenes`: the files that may hold their rows.
fn scenes_predicate(scenes: &[(String, String)]) -> Predicate {
    Predicate::or_from(scenes.iter().map(|(request, scene)| {
        Predicate::and(
            Expression::column(["request_id"]).eq(Expression::literal(request.as_str())),
            Expression::column(["scene_id"]).eq(Expression::literal(scene.as_str())),
        )
    }))
}

/// Whether a file's statistics say it holds exactly one scene (minimum = maximum of both ids).
fn single_scene(stats: Option<&str>) -> Option<(String, String)> {
    let stats: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let one = |column: &str| {
        let (lo, hi) = (stats["minValues"][column].as_str()?, stats["maxValues"][column].as_str()?);
        (lo == hi).then(|| lo.to_owned())
    };
    Some((one("request_id")?, one("scene_id")?))
}

impl Tables {
    /// The log store of `table`: its folder, through the tables' own object store.
    fn log_store(&self, table: &TableSchema) -> Result<LogStoreRef, TableError> {
        let at = self.root().join(table.name);
        let url = url::Url::parse(&format!("{}/", at.url().trim_end_matches('/')))
            .map_err(|e| TableError::Internal { reason: format!("`{}` is not a URL: {e}", at.url()) })?;
        let prefixed: Arc<dyn object_store::ObjectStore> = Arc::new(PrefixStore::new(Arc::clone(at.store()), at.path().clone()));
        Ok(default_logstore(prefixed, Arc::clone(at.store()), &url, &StorageConfig::default()))
    }

    /// Opens `table` at its latest version; `None` when it has no Delta log yet.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub async fn open(&self, table: &'static TableSchema) -> Result<Option<DeltaTable>, TableError> {
        let mut opened = self.opened.lock().await;
        if let Some(delta) = opened.get_mut(table.name) {
            let log = self.root().join(table.name).join("_delta_log").url();
            delta.update_incremental(None).await.map_err(delta_err(table, &format!("reading its log `{log}`")))?;
            return Ok(Some(delta.clone()));
        }
        // No log entry at all is no table. Asked first, because delta-rs logs an error for a
        // folder that does not exist yet before saying so.
        let log = self.root().join(table.name).join("_delta_log");
        if log.store().list(Some(log.path())).next().await.is_none() {
            return Ok(None);
        }
        let mut delta = DeltaTable::new(self.log_store(table)?);
        match delta.load().await {
            Ok(()) => {
                opened.insert(table.name, delta.clone());
                Ok(Some(delta))
            }
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(source) => Err(delta_err(table, &format!("reading its log `{}`", log.url()))(source)),
        }
    }

    /// The transaction that creates `table` (schema from [`schemas::tables`]); `actions` go
    /// into the same first version.
    pub(crate) fn create(
        &self,
        table: &'static TableSchema,
        actions: Vec<Action>,
    ) -> Result<deltalake_core::operations::create::CreateBuilder, TableError> {
        let columns: Vec<StructField> =
            table.columns.iter().map(|c| StructField::new(c.name, delta_type(c.ty), c.nullable || c.ty == ColumnType::ListUtf8)).collect();
        Ok(deltalake_core::operations::create::CreateBuilder::new()
            .with_log_store(self.log_store(table)?)
            .with_table_name(table.name)
            .with_comment(table.doc)
            .with_columns(columns)
            .with_actions(actions)
            .with_save_mode(SaveMode::ErrorIfExists))
    }

    /// Opens `table`, creating it when it does not exist. A folder holding the layout before
    /// Delta is refused: a table created over it would hide its rows.
    pub(crate) async fn open_or_create(&self, table: &'static TableSchema) -> Result<DeltaTable, TableError> {
        if let Some(delta) = self.open(table).await? {
            return Ok(delta);
        }
        if self.is_old_layout(table).await? {
            return Err(self.old_layout_error(table));
        }
        match self.create(table, Vec::new())?.await {
            Ok(delta) => Ok(delta),
            // Another writer created it first.
            Err(_) => self
                .open(table)
                .await?
                .ok_or_else(|| TableError::Internal { reason: format!("table `{}` could not be created", table.name) }),
        }
    }

    /// Commits `commit`: for each table it touches (the `scenes` table last, so a scene's row
    /// appears only once its other rows are in), one Delta transaction that removes the files
    /// holding the replaced scenes' rows and adds the new files. Data files are stored before
    /// their transaction; a file of a crashed commit is never referenced and is removed by
    /// `vacuum`. Files already in the table (a replay) are neither stored nor added again.
    ///
    /// # Errors
    /// Store failures, and a conflicting concurrent commit that delta-rs could not resolve by
    /// rebasing (retry the whole commit: it is idempotent).
    pub async fn commit(&self, commit: &Commit, geometry: &dyn GeometryReader) -> Result<(), TableError> {
        let mut order: Vec<&'static TableSchema> = schemas::tables::ALL.iter().collect();
        order.sort_by_key(|t| t.name == schemas::tables::SCENES.name);
        for table in order {
            let files: Vec<&DataFile> = commit.files.iter().filter(|f| f.table.name == table.name).collect();
            // The dead-letter table keeps a scene's failures of earlier runs only until a run
            // succeeds; a replaced scene's other tables lose their rows whether or not it
            // writes any (a rerun that detects nothing has no detections).
            if files.is_empty() && commit.replaces.is_empty() {
                continue;
            }
            let delta = match self.open(table).await? {
                Some(delta) => delta,
                None if files.is_empty() => continue,
                None => self.open_or_create(table).await?,
            };
            self.commit_table(table, &delta, &files, &commit.replaces, geometry).await?;
        }
        Ok(())
    }

    async fn commit_table(
        &self,
        table: &'static TableSchema,
        delta: &DeltaTable,
        files: &[&DataFile],
        replaces: &[(String, String)],
        geometry: &dyn GeometryReader,
    ) -> Result<(), TableError> {
        let folder = self.root().join(table.name);
        let new_paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let replaced: HashSet<(&str, &str)> = replaces.iter().map(|(r, s)| (r.as_str(), s.as_str())).collect();
        // Files that may hold rows of the replaced scenes, and which of the new files the log
        // already has (a replay).
        let mut present = HashSet::new();
        let mut candidates = Vec::new();
        let mut predicates: Vec<Predicate> = Vec::new();
        if !replaces.is_empty() {
            predicates.push(scenes_predicate(replaces));
        }
        let ids: BTreeSet<(String, String)> = files.iter().filter_map(|f| f.scene()).collect();
        if !ids.is_empty() {
            predicates.push(scenes_predicate(&ids.into_iter().collect::<Vec<_>>()));
        }
        if files.iter().any(|f| f.scene().is_none()) {
            predicates.push(Predicate::is_null(Expression::column(["request_id"])));
        }
        if !predicates.is_empty() {
            let views: Vec<_> = delta
                .get_active_add_actions_by_predicate(Some(Arc::new(Predicate::or_from(predicates))))
                .try_collect()
                .await
                .map_err(delta_err(table, "listing files"))?;
            for view in views {
                let path = view.path().into_owned();
                if new_paths.contains(path.as_str()) {
                    present.insert(path);
                } else {
                    candidates.push((path, view.size(), view.stats()));
                }
            }
        }
        let mut actions = Vec::new();
        let now = chrono::Utc::now().timestamp_millis();
        let remove = |path: &str, size: i64| {
            Action::Remove(Remove {
                path: path.to_owned(),
                data_change: true,
                deletion_timestamp: Some(now),
                size: Some(size),
                extended_file_metadata: Some(true),
                ..Default::default()
            })
        };
        for (path, size, stats) in candidates {
            match single_scene(stats.as_deref()) {
                Some((request, scene)) if replaced.contains(&(request.as_str(), scene.as_str())) => actions.push(remove(&path, size)),
                // Another scene's file, or one of a failure record (kept).
                Some(_) => {}
                None if replaced.is_empty() => {}
                // A file holding several scenes (compacted): rewritten without the replaced ones.
                None => {
                    if let Some(rest) = self.without_scenes(table, &path, &replaced, geometry).await? {
                        actions.push(remove(&path, size));
                        if let Some(rest) = rest {
                            actions.push(self.store_file(&folder, &rest, now).await?);
                        }
                    }
                }
            }
        }
        for file in files.iter().filter(|f| !present.contains(&f.path)) {
            actions.push(self.store_file(&folder, file, now).await?);
        }
        if actions.is_empty() {
            return Ok(());
        }
        let predicate = (!replaces.is_empty())
            .then(|| replaces.iter().map(|(r, s)| format!("(request_id = '{r}' AND scene_id = '{s}')")).collect::<Vec<_>>().join(" OR "));
        let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate };
        let snapshot = delta.snapshot().map_err(delta_err(table, "reading the log"))?;
        CommitBuilder::from(CommitProperties::default())
            .with_actions(actions)
            .build(Some(snapshot), delta.log_store(), operation)
            .await
            .map_err(delta_err(table, "committing"))?;
        Ok(())
    }

    /// Stores `file` in the table's folder and returns its add action.
    async fn store_file(&self, folder: &storage::Location, file: &DataFile, now: i64) -> Result<Action, TableError> {
        let at = folder.join(&file.path);
        at.store()
            .put(at.path(), PutPayload::from(file.bytes.clone()))
            .await
            .map_err(|source| TableError::Storage { uri: at.url(), source })?;
        Ok(Action::Add(Add {
            path: file.path.clone(),
            partition_values: HashMap::new(),
            size: i64::try_from(file.bytes.len()).unwrap_or(i64::MAX),
            modification_time: now,
            data_change: true,
            stats: Some(file.stats.clone()),
            ..Default::default()
        }))
    }

    /// Reads a file holding several scenes; `None` when it holds none of `replaced`, else the
    /// file of its other rows (`Some(None)` when none are left).
    async fn without_scenes(
        &self,
        table: &'static TableSchema,
        path: &str,
        replaced: &HashSet<(&str, &str)>,
        geometry: &dyn GeometryReader,
    ) -> Result<Option<Option<DataFile>>, TableError> {
        let frame = self.read_file(table, path, None).await?;
        let (requests, scenes) = (id_column(&frame, "request_id"), id_column(&frame, "scene_id"));
        let keep: Vec<bool> = requests
            .iter()
            .zip(&scenes)
            .map(|(r, s)| !matches!((r, s), (Some(r), Some(s)) if replaced.contains(&(r.as_str(), s.as_str()))))
            .collect();
        if keep.iter().all(|k| *k) {
            return Ok(None);
        }
        if !keep.iter().any(|k| *k) {
            return Ok(Some(None));
        }
        let mask: polars::prelude::BooleanChunked = keep.iter().copied().map(Some).collect();
        let mut rest = frame.filter(&mask).map_err(frame_err(table, "rewriting a file"))?;
        let date = date_of(path).unwrap_or_default();
        let stem = path.rsplit('/').next().and_then(|n| n.rsplit_once('-')).map_or("rewritten", |(stem, _)| stem).to_owned();
        let folder = path.split('/').nth(1).filter(|f| !f.ends_with(".parquet")).unwrap_or("compacted").to_owned();
        DataFile::encode(table, &mut rest, geometry, date, &folder, &stem).map(|f| Some(Some(f)))
    }

    /// Reads one data file of `table` (its `columns`, or all), whole.
    ///
    /// # Errors
    /// Store and Parquet errors, naming the file.
    pub async fn read_file(&self, table: &TableSchema, path: &str, columns: Option<&[String]>) -> Result<DataFrame, TableError> {
        let at = self.root().join(table.name).join(path);
        let store_err = |source| TableError::Storage { uri: at.url(), source };
        let bytes = at.store().get(at.path()).await.map_err(store_err)?.bytes().await.map_err(store_err)?;
        let mut reader = ParquetReader::new(std::io::Cursor::new(bytes));
        if let Some(columns) = columns {
            reader = reader.with_columns(Some(columns.to_vec()));
        }
        reader.finish().map_err(frame_err(table, &format!("reading `{}`", at.url())))
    }
}

fn frame_err(table: &TableSchema, action: &str) -> impl FnOnce(polars::error::PolarsError) -> TableError {
    let (table, action) = (table.name.to_owned(), action.to_owned());
    move |source| TableError::Frame { table, action, source }
}

fn id_column(frame: &DataFrame, name: &str) -> Vec<Option<String>> {
    frame
        .column(name)
        .ok()
        .and_then(|c| c.str().ok().map(|s| s.iter().map(|v| v.map(str::to_owned)).collect()))
        .unwrap_or_else(|| vec![None; frame.height()])
}

/// The date of a data file's folder (`date=YYYY-MM-DD/...`).
fn date_of(path: &str) -> Option<NaiveDate> {
    let folder = path.split('/').next()?.strip_prefix("date=")?;
    NaiveDate::parse_from_str(folder, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_give_bounds_a_reader_can_skip_by() {
        let frame = polars::df!(
            "request_id" => ["r1", "r1"],
            "scene_id" => ["s1", "s1"],
            "score" => [0.5f32, 0.9],
            "caption" => ["short", "a caption longer than thirty-two characters"],
        )
        .expect("frame");
        let table = TableSchema {
            name: "t",
            doc: "",
            columns: &[
                schemas::tables::Column { name: "request_id", ty: ColumnType::Utf8, nullable: false, doc: "" },
                schemas::tables::Column { name: "scene_id", ty: ColumnType::Utf8, nullable: false, doc: "" },
                schemas::tables::Column { name: "score", ty: ColumnType::Float32, nullable: false, doc: "" },
                schemas::tables::Column { name: "caption", ty: ColumnType::Utf8, nullable: false, doc: "" },
            ],
            geometry_column: None,
            key: &[],
        };
        let stats: serde_json::Value = serde_json::from_str(&statistics(&table, &frame)).expect("json");
        assert_eq!(stats["numRecords"], 2);
        assert_eq!(stats["minValues"]["score"], 0.5);
        assert!((stats["maxValues"]["score"].as_f64().expect("max") - 0.9).abs() < 1e-6);
        // A string over 32 characters is bounded by its prefix, raised by one for the maximum.
        assert_eq!(stats["minValues"]["caption"], "a caption longer than thirty-two");
        assert_eq!(stats["maxValues"]["caption"], "short");
        assert_eq!(super::string_bound("abcdef", 3, true), Some("abd".into()));
        assert_eq!(single_scene(Some(&stats.to_string())), Some(("r1".to_owned(), "s1".to_owned())));
    }
}

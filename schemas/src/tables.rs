//! Result table schemas — the single source of truth for column names and types. The sink
//! builds Parquet schemas from these and the query command documents them; nothing else
//! spells a column name.
//!
//! Every result row carries request id, scene id, tile id, task, model version and time;
//! tables are partitioned by the `date` column. Geometry columns hold WKB in lon/lat
//! (EPSG:4326), described by GeoParquet 1.1 `geo` metadata.

/// What every `score` column holds: the answer's geometric-mean token probability.
pub const SCORE_DOC: &str = "Geometric-mean token probability of the answer, exp(mean log p), in (0, 1]";

/// Logical column types, mapped to Arrow/Parquet types by the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 string.
    Utf8,
    /// Boolean.
    Bool,
    /// Unsigned 32-bit integer.
    UInt32,
    /// Unsigned 64-bit integer.
    UInt64,
    /// Signed 64-bit integer.
    Int64,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// Microseconds since the epoch, UTC.
    TimestampMicros,
    /// Calendar date (partition key).
    Date,
    /// Well-known binary geometry, lon/lat.
    GeometryWkb,
    /// List of UTF-8 strings.
    ListUtf8,
}

/// One column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: &'static str,
    /// Logical type.
    pub ty: ColumnType,
    /// Whether nulls are allowed.
    pub nullable: bool,
    /// What the column holds.
    pub doc: &'static str,
}

/// One table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSchema {
    /// Table name, as used in `FROM` clauses and folder names.
    pub name: &'static str,
    /// What one row is.
    pub doc: &'static str,
    /// Columns in order.
    pub columns: &'static [Column],
    /// The primary geometry column, if the table is spatial.
    pub geometry_column: Option<&'static str>,
    /// Columns that identify a row; a rerun replaces rows with the same key.
    pub key: &'static [&'static str],
}

impl TableSchema {
    /// The column with this name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

const fn col(name: &'static str, ty: ColumnType, doc: &'static str) -> Column {
    Column { name, ty, nullable: false, doc }
}
const fn opt(name: &'static str, ty: ColumnType, doc: &'static str) -> Column {
    Column { name, ty, nullable: true, doc }
}

use ColumnType::*;

macro_rules! result_table {
    ($name:literal, $doc:literal, [$($extra:expr),* $(,)?]) => {
        TableSchema {
            name: $name,
            doc: $doc,
            columns: &[
                col("request_id", Utf8, "Request the scene belongs to"),
                col("scene_id", Utf8, "Scene id"),
                col("tile_id", Utf8, "Tile id, stable across reruns"),
                col("task", Utf8, "Task kind: caption, classify, vqa or detect"),
                col("model_version", Utf8, "Model artifact version that produced the row"),
                $($extra,)*
                col("retrieved_ids", ListUtf8, "Ids of the descriptions the retriever gave the model, best first"),
                col("descriptions_used", UInt32, "How many of them fitted the semantic-token budget"),
                col("produced_at", TimestampMicros, "When the row was produced (UTC)"),
                col("date", Date, "Partition date (UTC) of the request (submitted_at)"),
            ],
            geometry_column: None,
            key: &["request_id", "scene_id", "tile_id", "task", "model_version"],
        }
    };
}

/// One row per tile cut from a scene.
pub const TILES: TableSchema = TableSchema {
    name: "tiles",
    doc: "One row per tile: its window, georeference and footprint",
    columns: &[
        col("request_id", Utf8, "Request the scene belongs to"),
        col("scene_id", Utf8, "Scene id"),
        col("tile_id", Utf8, "Tile id, stable across reruns"),
        col("tile_uri", Utf8, "Object URL of the tile image"),
        col("col_off", UInt64, "Left edge of the source window, scene pixels"),
        col("row_off", UInt64, "Top edge of the source window, scene pixels"),
        col("width", UInt32, "Source window width, scene pixels"),
        col("height", UInt32, "Source window height, scene pixels"),
        col("output_size_px", UInt32, "Side of the tile image"),
        col("crs_wkt", Utf8, "Scene CRS as WKT"),
        opt("crs_epsg", UInt32, "Scene CRS EPSG code, when it has one"),
        col("geotransform", Utf8, "Tile image geotransform, 6 GDAL coefficients as JSON"),
        col("geometry", GeometryWkb, "Footprint polygon, lon/lat"),
        col("valid_fraction", Float32, "Fraction of the window's pixels that hold data"),
        col("produced_at", TimestampMicros, "When the tile was cut (UTC)"),
        col("date", Date, "Partition date (UTC) of the request (submitted_at)"),
    ],
    geometry_column: Some("geometry"),
    key: &["request_id", "scene_id", "tile_id"],
};

/// One row per caption.
pub const CAPTIONS: TableSchema =
    result_table!("captions", "One row per captioned tile", [col("caption", Utf8, "The caption"), col("score", Float32, SCORE_DOC)]);

/// One row per classification.
pub const CLASSIFICATIONS: TableSchema = result_table!(
    "classifications",
    "One row per classified tile",
    [
        opt("label", Utf8, "Matched candidate class, null when the answer matched none"),
        col("raw_answer", Utf8, "The model's answer as generated"),
        col("candidates", ListUtf8, "Candidate classes offered"),
        col("score", Float32, SCORE_DOC),
    ]
);

/// One row per VQA answer.
pub const VQA: TableSchema = TableSchema {
    key: &["request_id", "scene_id", "tile_id", "task", "model_version", "question"],
    ..result_table!(
        "vqa",
        "One row per question asked of a tile",
        [col("question", Utf8, "The question"), col("answer", Utf8, "The normalised answer"), col("score", Float32, SCORE_DOC),]
    )
};

/// One row per detected box.
pub const DETECTIONS: TableSchema = TableSchema {
    geometry_column: Some("geometry"),
    key: &["request_id", "scene_id", "tile_id", "task", "model_version", "target", "box_index"],
    ..result_table!(
        "detections",
        "One row per detected object of a scene, after cross-tile NMS",
        [
            col("target", Utf8, "What was searched for"),
            col("box_index", UInt32, "Index of the box within the answer"),
            col("label", Utf8, "Label of the box (the target searched for)"),
            col("tile_x1", Float64, "Box left, tile pixels"),
            col("tile_y1", Float64, "Box top, tile pixels"),
            col("tile_x2", Float64, "Box right, tile pixels"),
            col("tile_y2", Float64, "Box bottom, tile pixels"),
            col("scene_x1", Float64, "Box left, scene pixels"),
            col("scene_y1", Float64, "Box top, scene pixels"),
            col("scene_x2", Float64, "Box right, scene pixels"),
            col("scene_y2", Float64, "Box bottom, scene pixels"),
            col("geometry", GeometryWkb, "Box polygon, lon/lat (a MultiPolygon split at ±180° where it crosses the antimeridian)"),
            col("score", Float32, SCORE_DOC),
            col("tiles", ListUtf8, "Every tile that saw the object (overlapping tiles merged by NMS); tile_id is the best one"),
        ]
    )
};

/// One row per scene.
pub const SCENES: TableSchema = TableSchema {
    name: "scenes",
    doc: "One row per finished scene: size, CRS, footprint, tile counts and the summary of every task",
    columns: &[
        col("request_id", Utf8, "Request the scene belongs to"),
        col("scene_id", Utf8, "Scene id"),
        col("source_uri", Utf8, "Where the scene was read from"),
        col("width", UInt64, "Scene width, pixels"),
        col("height", UInt64, "Scene height, pixels"),
        col("band_count", UInt32, "Number of bands"),
        col("dtype", Utf8, "Band data type"),
        opt("crs_epsg", UInt32, "Scene CRS EPSG code, when it has one"),
        col("tiles_written", UInt64, "Tiles written"),
        col("tiles_skipped_nodata", UInt64, "Windows skipped because they held no data"),
        col("tiles_failed", UInt64, "Tiles whose inference failed (each has a dead_letter row)"),
        opt("model_version", Utf8, "Model artifact version, null when no tasks ran"),
        col("tiles_per_task", Utf8, "Tiles answered per task, JSON object (task -> count)"),
        opt("majority_class", Utf8, "The class most tiles were given, null without classification"),
        col("class_histogram", Utf8, "Tiles per class, JSON object (class -> count)"),
        col("detections_per_label", Utf8, "Detections after cross-tile NMS per label, JSON object"),
        col("tile_ms", Float64, "Wall time tiling the scene, milliseconds"),
        col("infer_ms", Float64, "Model time summed over the scene's tiles, milliseconds"),
        col("retrieve_ms", Float64, "Retrieval time summed over the scene's tiles, milliseconds"),
        col("merge_ms", Float64, "Time merging the scene's results, milliseconds"),
        col("geometry", GeometryWkb, "Scene footprint polygon, lon/lat"),
        col("produced_at", TimestampMicros, "When the scene finished (UTC)"),
        col("date", Date, "Partition date (UTC) of the request (submitted_at)"),
    ],
    geometry_column: Some("geometry"),
    key: &["request_id", "scene_id"],
};

/// One row per dead-lettered input in batch mode (the Kafka runtime uses the topic).
pub const DEAD_LETTER: TableSchema = TableSchema {
    name: "dead_letter",
    doc: "One row per input a stage gave up on",
    columns: &[
        col("stage", Utf8, "Stage that gave up"),
        col("error_kind", Utf8, "`permanent`, `retries_exhausted` or `internal`"),
        col("message", Utf8, "The error, with its causes"),
        opt("request_id", Utf8, "Request id, when known"),
        opt("scene_id", Utf8, "Scene id, when known"),
        opt("tile_id", Utf8, "Tile id, when known"),
        col(
            "original_payload",
            Utf8,
            "The whole dead-letter record as JSON, as on the dead-letter topic: stage, error, source topic/partition/offset, and the input as received under its own `original_payload`"
        ),
        col("failed_at", TimestampMicros, "When the stage gave up (UTC)"),
        col("date", Date, "Partition date (UTC) of failed_at"),
    ],
    geometry_column: None,
    key: &["stage", "request_id", "scene_id", "tile_id"],
};

/// The tables with one file per scene, written together when the scene completes.
pub const SCENE_TABLES: &[TableSchema] = &[TILES, CAPTIONS, CLASSIFICATIONS, VQA, DETECTIONS, SCENES];

/// The retriever's description database (`descriptions.parquet` in an index; not a result
/// table, so not in [`ALL`]).
pub const DESCRIPTIONS: TableSchema = TableSchema {
    name: "descriptions",
    doc: "One row per description of the retriever's database",
    columns: &[
        col("id", Utf8, "Unique id"),
        col("text", Utf8, "The text that is embedded and handed to the prompter"),
        opt("level", Utf8, "Semantic level (scene, object, ...)"),
        opt("category", Utf8, "Category tag"),
        opt("source", Utf8, "Where it came from"),
    ],
    geometry_column: None,
    key: &["id"],
};

/// An evaluation run's report (`report.parquet` beside its predictions; not a result table).
pub const EVAL_REPORT: TableSchema = TableSchema {
    name: "report",
    doc: "One row per metric of one evaluation run",
    columns: &[
        col("benchmark", Utf8, "The benchmark's name"),
        col("model_version", Utf8, "The model artifact's version"),
        col("metric", Utf8, "The metric's name, as the report table prints it"),
        col("value", Float64, "Its value"),
        col("count", UInt64, "How many samples it was computed over"),
    ],
    geometry_column: None,
    key: &["benchmark", "model_version", "metric"],
};

/// Every result table Strata writes.
pub const ALL: &[TableSchema] = &[TILES, CAPTIONS, CLASSIFICATIONS, VQA, DETECTIONS, SCENES, DEAD_LETTER];

/// The table with this name.
pub fn by_name(name: &str) -> Option<&'static TableSchema> {
    ALL.iter().find(|t| t.name == name)
}

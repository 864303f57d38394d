//! SQL over the result tables (polars SQL), read through their Delta logs. Every table of [`schemas::tables::ALL`] that the
//! SQL names is registered under its name, empty when nothing has been written yet, so a query
//! never fails just because a table has no rows. Files are read through the object store, so the same
//! query works on a local folder, S3 or memory.

use futures::{StreamExt as _, TryStreamExt as _};
use polars::{
    prelude::{
        concat, Column, CsvWriter, DataFrame, DataType, IntoLazy, JsonFormat, JsonWriter, LazyFrame, NamedFrom, SerWriter, Series,
        UnionArgs,
    },
    sql::SQLContext,
};

use crate::{frames, prune::QueryNeeds, GeometryReader, TableError, Tables};

/// How query results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// An aligned text table; geometries as WKT.
    #[default]
    Table,
    /// CSV with a header; geometries as WKT.
    Csv,
    /// A JSON array of row objects; geometries as WKT.
    Json,
    /// A GeoJSON FeatureCollection: the `geometry` column (or else the first geometry column)
    /// becomes each feature's geometry, the other columns its properties.
    GeoJson,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "geojson" => Ok(Self::GeoJson),
            other => Err(format!("unknown format `{other}`; use table, csv, json or geojson")),
        }
    }
}

fn table_err(table: &str, action: &str) -> impl FnOnce(polars::error::PolarsError) -> TableError {
    let (table, action) = (table.to_owned(), action.to_owned());
    move |source| TableError::Frame { table, action, source }
}

/// How many data files a query reads at once.
const CONCURRENT_READS: usize = 16;

/// Loads what a query needs of one table: through its Delta log, only the files whose
/// statistics can match the query's conditions ([`QueryNeeds::predicate`]), only the columns
/// it names, [`CONCURRENT_READS`] files at a time. A table never written is an empty frame of
/// its schema; one in the layout before Delta is refused with a hint to migrate.
async fn load_table(tables: &Tables, table: &'static schemas::tables::TableSchema, needs: &QueryNeeds) -> Result<LazyFrame, TableError> {
    let Some(delta) = tables.open(table).await? else {
        if tables.is_old_layout(table).await? {
            return Err(tables.old_layout_error(table));
        }
        return Ok(frames::frame(table, &[])?.lazy());
    };
    let predicate = needs.predicate(table).map(std::sync::Arc::new);
    let mut paths: Vec<String> =
        delta.get_active_add_actions_by_predicate(predicate).map_ok(|view| view.path().into_owned()).try_collect().await.map_err(
            |source| TableError::Delta { table: table.name.to_owned(), action: "listing files".to_owned(), source: Box::new(source) },
        )?;
    paths.sort();
    let columns = needs.columns(table);
    let expected: Vec<&str> = match &columns {
        Some(columns) => columns.iter().map(String::as_str).collect(),
        None => table.columns.iter().map(|c| c.name).collect(),
    };
    let (columns, expected) = (&columns, &expected);
    let frames: Vec<LazyFrame> = futures::stream::iter(paths)
        .map(|path| async move {
            let frame = tables.read_file(table, &path, columns.as_deref()).await?;
            // A file that is not one of this table's (another writer's) is named here,
            // rather than failing the union of every file with a plan dump.
            let names: Vec<&str> = frame.get_column_names().into_iter().map(|n| n.as_str()).collect();
            if names != *expected {
                return Err(TableError::Query {
                    reason: format!(
                        "`{}` is not a file of the `{}` table: its columns are {names:?}, the table's are {expected:?}",
                        tables.root().join(table.name).join(&path).url(),
                        table.name
                    ),
                });
            }
            Ok(frame.lazy())
        })
        .buffered(CONCURRENT_READS)
        .try_collect()
        .await?;
    if frames.is_empty() {
        let empty = frames::frame(table, &[])?;
        return Ok(match columns {
            Some(columns) => empty.select(columns.iter().map(String::as_str)).map_err(table_err(table.name, "selecting columns"))?.lazy(),
            None => empty.lazy(),
        });
    }
    concat(&frames, UnionArgs { to_supertypes: true, ..UnionArgs::default() }).map_err(table_err(table.name, "combining files"))
}

/// Runs `sql` over the tables at `tables`.
///
/// # Errors
/// [`TableError::Query`] for SQL errors (unknown table or column, syntax) and tables in the
/// layout before Delta, storage and Parquet errors while loading.
pub async fn run(tables: &Tables, sql: &str) -> Result<DataFrame, TableError> {
    let mut context = SQLContext::new();
    let needs = QueryNeeds::of(sql);
    // Only the tables the SQL names are read: one table's unreadable file does not fail a
    // query over another, and nothing is read that the query cannot use.
    for table in schemas::tables::ALL.iter().filter(|t| names_table(sql, t.name)) {
        context.register(table.name, load_table(tables, table, &needs).await?);
    }
    let plan = context.execute(sql).map_err(query_error)?;
    plan.collect().map_err(query_error)
}

/// Runs `sql` over frames loaded elsewhere, each table the union of its frames: the same SQL
/// engine over another layout's files (how `benches/tables` times the layout before Delta).
///
/// # Errors
/// As [`run`].
pub fn run_frames(tables: Vec<(&'static str, Vec<DataFrame>)>, sql: &str) -> Result<DataFrame, TableError> {
    let mut context = SQLContext::new();
    for (name, frames) in tables {
        let lazy: Vec<LazyFrame> = frames.into_iter().map(IntoLazy::lazy).collect();
        if !lazy.is_empty() {
            context.register(
                name,
                concat(&lazy, UnionArgs { to_supertypes: true, ..UnionArgs::default() }).map_err(table_err(name, "combining files"))?,
            );
        }
    }
    context.execute(sql).map_err(query_error)?.collect().map_err(query_error)
}

/// Whether `sql` names `table` as a word (`tiles`, not `tiles_written`), in any case. A
/// mention in a string literal loads the table for nothing, which is harmless.
pub fn names_table(sql: &str, table: &str) -> bool {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|word| word.eq_ignore_ascii_case(table))
}

/// polars' SQL error, without the plan it appends after a failure (internal node names that
/// say nothing about the SQL the user wrote).
fn query_error(error: polars::error::PolarsError) -> TableError {
    let text = error.to_string();
    let reason = text.split("\n\nResolved plan until failure").next().unwrap_or(&text);
    TableError::Query { reason: reason.trim_end().to_owned() }
}

/// Names of binary (WKB geometry) columns.
fn geometry_columns(frame: &DataFrame) -> Vec<String> {
    frame.columns().iter().filter(|c| c.dtype() == &DataType::Binary).map(|c| c.name().to_string()).collect()
}

/// Replaces WKB columns by WKT text, for formats that cannot show binary.
fn with_wkt(mut frame: DataFrame, geometry: &dyn GeometryReader) -> Result<DataFrame, TableError> {
    for name in geometry_columns(&frame) {
        let wkb = frame.column(&name).and_then(|c| c.binary().cloned()).map_err(table_err("result", "reading geometry"))?;
        let wkt: Vec<Option<String>> =
            wkb.iter().map(|v| v.map(|bytes| geometry.wkt(bytes).unwrap_or_else(|e| format!("<invalid WKB: {e}>")))).collect();
        frame.with_column(Column::from(Series::new(name.as_str().into(), wkt))).map_err(table_err("result", "converting geometry"))?;
    }
    Ok(frame)
}

/// Renders a result.
///
/// # Errors
/// When the result cannot be serialised.
pub fn render(frame: DataFrame, format: OutputFormat, geometry: &dyn GeometryReader) -> Result<String, TableError> {
    match format {
        OutputFormat::Table => Ok(format!("{}", with_wkt(frame, geometry)?)),
        OutputFormat::Csv => {
            let mut frame = with_wkt(frame, geometry)?;
            let mut out = Vec::new();
            CsvWriter::new(&mut out).finish(&mut frame).map_err(table_err("result", "writing CSV"))?;
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        OutputFormat::Json => {
            let mut frame = with_wkt(frame, geometry)?;
            Ok(json_rows(&mut frame)?.to_string())
        }
        OutputFormat::GeoJson => geojson(frame, geometry),
    }
}

fn json_rows(frame: &mut DataFrame) -> Result<serde_json::Value, TableError> {
    let mut out = Vec::new();
    JsonWriter::new(&mut out).with_json_format(JsonFormat::Json).finish(frame).map_err(table_err("result", "writing JSON"))?;
    serde_json::from_slice(&out).map_err(|e| TableError::Internal { reason: format!("polars wrote invalid JSON: {e}") })
}

fn geojson(frame: DataFrame, geometry: &dyn GeometryReader) -> Result<String, TableError> {
    let geometry_cols = geometry_columns(&frame);
    // The column called `geometry` when the result has one, else the first geometry column.
    let primary = geometry_cols.iter().find(|c| c.as_str() == "geometry").or_else(|| geometry_cols.first()).cloned();
    let Some(primary) = primary else {
        return Err(TableError::Query {
            reason: "the result has no geometry column; select `geometry` (from tiles, scenes or detections) for GeoJSON".to_owned(),
        });
    };
    let wkb = frame.column(&primary).and_then(|c| c.binary().cloned()).map_err(table_err("result", "reading geometry"))?;
    let mut properties = frame.drop(&primary).map_err(table_err("result", "splitting geometry"))?;
    let mut properties = with_wkt(std::mem::take(&mut properties), geometry)?;
    let rows = match json_rows(&mut properties)? {
        serde_json::Value::Array(rows) => rows,
        _ => Vec::new(),
    };
    let features: Vec<serde_json::Value> = wkb
        .iter()
        .zip(rows)
        .map(|(wkb, props)| {
            let geometry = wkb
                .and_then(|bytes| geometry.geojson(bytes))
                .map(|mut geometry| {
                    rfc7946_winding(&mut geometry);
                    geometry
                })
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "type": "Feature", "geometry": geometry, "properties": props })
        })
        .collect();
    Ok(serde_json::json!({ "type": "FeatureCollection", "features": features }).to_string())
}

/// Winds every polygon of a GeoJSON geometry as RFC 7946 §3.1.6 requires: exterior rings
/// counter-clockwise, holes clockwise. The tables already store counter-clockwise rings; this
/// keeps the promise for rows written before they did, or by other writers.
fn rfc7946_winding(geometry: &mut serde_json::Value) {
    fn twice_area(ring: &[serde_json::Value]) -> f64 {
        let xy = |p: &serde_json::Value| (p[0].as_f64().unwrap_or(0.0), p[1].as_f64().unwrap_or(0.0));
        ring.windows(2)
            .map(|w| {
                let ((x0, y0), (x1, y1)) = (xy(&w[0]), xy(&w[1]));
                x0 * y1 - x1 * y0
            })
            .sum()
    }
    fn polygon(rings: &mut serde_json::Value) {
        let Some(rings) = rings.as_array_mut() else { return };
        for (i, ring) in rings.iter_mut().enumerate() {
            let Some(points) = ring.as_array_mut() else { continue };
            let area = twice_area(points);
            if (i == 0 && area < 0.0) || (i > 0 && area > 0.0) {
                points.reverse();
            }
        }
    }
    match geometry["type"].as_str() {
        Some("Polygon") => polygon(&mut geometry["coordinates"]),
        Some("MultiPolygon") => {
            if let Some(polygons) = geometry["coordinates"].as_array_mut() {
                polygons.iter_mut().for_each(polygon);
            }
        }
        Some("GeometryCollection") => {
            if let Some(members) = geometry["geometries"].as_array_mut() {
                members.iter_mut().for_each(rfc7946_winding);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::rfc7946_winding;

    #[test]
    fn only_the_tables_a_query_names_are_read() {
        use super::names_table;
        assert!(names_table("SELECT count(*) FROM tiles", "tiles"));
        assert!(names_table("select * from TILES t join Scenes s using (scene_id)", "scenes"));
        assert!(!names_table("SELECT tiles_written FROM scenes", "tiles"));
        assert!(!names_table("SELECT * FROM dead_letter", "tiles"));
    }

    #[test]
    fn geojson_polygons_are_wound_as_rfc7946_says() {
        // A clockwise exterior with a counter-clockwise hole, and a clockwise multipolygon part.
        let mut polygon = serde_json::json!({ "type": "Polygon", "coordinates": [
            [[0.0, 0.0], [0.0, 4.0], [4.0, 4.0], [4.0, 0.0], [0.0, 0.0]],
            [[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 2.0], [1.0, 1.0]]
        ]});
        rfc7946_winding(&mut polygon);
        assert_eq!(polygon["coordinates"][0][1], serde_json::json!([4.0, 0.0]), "exterior counter-clockwise");
        assert_eq!(polygon["coordinates"][1][1], serde_json::json!([1.0, 2.0]), "hole clockwise");
        let mut multi = serde_json::json!({ "type": "MultiPolygon", "coordinates": [
            [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]],
            [[[5.0, 5.0], [5.0, 6.0], [6.0, 6.0], [5.0, 5.0]]]
        ]});
        rfc7946_winding(&mut multi);
        assert_eq!(multi["coordinates"][0][0][1], serde_json::json!([1.0, 0.0]), "already counter-clockwise: kept");
        assert_eq!(multi["coordinates"][1][0][1], serde_json::json!([6.0, 6.0]), "clockwise part reversed");
    }
}

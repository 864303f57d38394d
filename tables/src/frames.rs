//! Rows to DataFrames, driven by the table schemas: every value is checked against its
//! column's declared type and nullability here, once, for every table.

use chrono::{DateTime, NaiveDate, Utc};
use polars::prelude::{Column, DataFrame, DataType, IntoSeries, ListChunked, NamedFrom, Series, TimeUnit, TimeZone};
use schemas::{
    tables::{self, ColumnType, TableSchema},
    DeadLetterRecord,
};

use crate::TableError;

/// One cell, typed loosely; [`frame`] checks it against the column.
#[derive(Debug, Clone)]
pub enum Cell {
    /// A string.
    Str(String),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A 32-bit float.
    F32(f32),
    /// A 64-bit float.
    F64(f64),
    /// A timestamp.
    Time(DateTime<Utc>),
    /// A date.
    Date(NaiveDate),
    /// WKB bytes.
    Geometry(Vec<u8>),
    /// A list of strings.
    List(Vec<String>),
    /// Null.
    Null,
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(value: Option<T>) -> Self {
        value.map_or(Cell::Null, Into::into)
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Str(v)
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Str(v.to_owned())
    }
}
impl From<u32> for Cell {
    fn from(v: u32) -> Self {
        Cell::U32(v)
    }
}
impl From<u64> for Cell {
    fn from(v: u64) -> Self {
        Cell::U64(v)
    }
}
impl From<f32> for Cell {
    fn from(v: f32) -> Self {
        Cell::F32(v)
    }
}

fn mismatch(table: &TableSchema, column: &str, cell: &Cell) -> TableError {
    TableError::Internal { reason: format!("table `{}` column `{column}` cannot hold {cell:?}", table.name) }
}

/// Builds a frame for `table` from rows whose cells are in column order.
///
/// # Errors
/// When a row has the wrong length, a cell the wrong type, or a null in a non-null column.
pub fn frame(table: &TableSchema, rows: &[Vec<Cell>]) -> Result<DataFrame, TableError> {
    if let Some(row) = rows.iter().find(|r| r.len() != table.columns.len()) {
        return Err(TableError::Internal {
            reason: format!("table `{}` has {} columns, a row has {}", table.name, table.columns.len(), row.len()),
        });
    }
    let mut columns = Vec::with_capacity(table.columns.len());
    for (i, spec) in table.columns.iter().enumerate() {
        let cells = rows.iter().map(|r| &r[i]);
        if !spec.nullable {
            if let Some(cell) = cells.clone().find(|c| matches!(c, Cell::Null)) {
                return Err(mismatch(table, spec.name, cell));
            }
        }
        let name = spec.name.into();
        macro_rules! collect {
            ($variant:ident, $map:expr) => {{
                let mut values = Vec::with_capacity(rows.len());
                for cell in cells {
                    values.push(match cell {
                        Cell::$variant(v) => Some($map(v)),
                        Cell::Null => None,
                        other => return Err(mismatch(table, spec.name, other)),
                    });
                }
                values
            }};
        }
        let series = match spec.ty {
            ColumnType::Utf8 => Series::new(name, collect!(Str, |v: &String| v.clone())),
            ColumnType::UInt32 => Series::new(name, collect!(U32, |v: &u32| *v)),
            ColumnType::UInt64 => Series::new(name, collect!(U64, |v: &u64| *v)),
            ColumnType::Float32 => Series::new(name, collect!(F32, |v: &f32| *v)),
            ColumnType::Float64 => Series::new(name, collect!(F64, |v: &f64| *v)),
            ColumnType::Int64 | ColumnType::Bool => {
                return Err(TableError::Internal { reason: format!("no writer for column type {:?}", spec.ty) })
            }
            ColumnType::TimestampMicros => Series::new(name, collect!(Time, |v: &DateTime<Utc>| v.timestamp_micros()))
                .cast(&DataType::Datetime(TimeUnit::Microseconds, Some(TimeZone::UTC)))
                .map_err(|source| table_err(table, source))?,
            ColumnType::Date => {
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
                let days = collect!(Date, |v: &NaiveDate| i32::try_from((*v - epoch).num_days()).unwrap_or(i32::MAX));
                Series::new(name, days).cast(&DataType::Date).map_err(|source| table_err(table, source))?
            }
            ColumnType::GeometryWkb => Series::new(name, collect!(Geometry, |v: &Vec<u8>| v.clone())),
            ColumnType::ListUtf8 => {
                let lists = collect!(List, |v: &Vec<String>| Series::new("".into(), v.clone()));
                let chunked: ListChunked = lists.into_iter().collect();
                chunked.into_series().with_name(name)
            }
        };
        columns.push(Column::from(series));
    }
    DataFrame::new(rows.len(), columns).map_err(|source| table_err(table, source))
}

fn table_err(table: &TableSchema, source: polars::error::PolarsError) -> TableError {
    TableError::Frame { table: table.name.to_owned(), action: "building rows".to_owned(), source }
}

/// Rows of the `dead_letter` table.
///
/// # Errors
/// Only on an internal schema mismatch.
pub fn dead_letter_frame(records: &[DeadLetterRecord]) -> Result<DataFrame, TableError> {
    let rows: Vec<Vec<Cell>> = records
        .iter()
        .map(|r| {
            vec![
                r.stage.as_str().into(),
                r.error_kind.as_str().into(),
                r.message.as_str().into(),
                r.request_id.clone().into(),
                r.scene_id.clone().into(),
                r.tile_id.clone().into(),
                String::from_utf8_lossy(&schemas::encode(r)).into_owned().into(),
                Cell::Time(r.failed_at),
                Cell::Date(r.failed_at.date_naive()),
            ]
        })
        .collect();
    frame(&tables::DEAD_LETTER, &rows)
}

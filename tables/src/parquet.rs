//! Plain Parquet files on a local disk, for the small tables that are not result tables: the
//! retriever's description database and the evaluation report. Rows are built and checked by
//! the same [`crate::frame`] as the result tables, against a schema declared beside the code
//! that fills them.

use std::path::Path;

use polars::prelude::{ParquetReader, ParquetWriter, SerReader};
use schemas::tables::TableSchema;

use crate::{frames::Cell, TableError};

fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> TableError {
    let path = path.to_owned();
    move |source| TableError::Io { path, action, source }
}

fn frame_err(table: &TableSchema, action: &str) -> impl FnOnce(polars::error::PolarsError) -> TableError {
    let (table, action) = (table.name.to_owned(), action.to_owned());
    move |source| TableError::Frame { table, action, source }
}

/// Writes `rows` (cells in `table`'s column order) to `path` as one Parquet file, replacing it.
///
/// # Errors
/// [`TableError::Internal`] for rows that do not fit the schema; [`TableError::Io`] and
/// [`TableError::Frame`] when the file cannot be written.
pub fn write(path: &Path, table: &TableSchema, rows: &[Vec<Cell>]) -> Result<(), TableError> {
    let mut frame = crate::frame(table, rows)?;
    let file = std::fs::File::create(path).map_err(io(path, "creating"))?;
    ParquetWriter::new(file).finish(&mut frame).map_err(frame_err(table, "writing Parquet"))?;
    Ok(())
}

/// Reads the text columns `columns` of `table`'s Parquet file at `path`, one vector per
/// column in the order asked, each as long as the file has rows (nulls as `None`).
///
/// # Errors
/// [`TableError::Io`] for a missing file; [`TableError::Frame`] for a file that is not
/// Parquet, lacks a column, or holds a column that is not text.
pub fn read_text_columns(path: &Path, table: &TableSchema, columns: &[&str]) -> Result<Vec<Vec<Option<String>>>, TableError> {
    let file = std::fs::File::open(path).map_err(io(path, "opening"))?;
    let frame = ParquetReader::new(file).finish().map_err(frame_err(table, "reading Parquet"))?;
    columns
        .iter()
        .map(|name| {
            let column = frame.column(name).map_err(frame_err(table, &format!("reading column `{name}`")))?;
            let values = column.str().map_err(frame_err(table, &format!("reading column `{name}` as text")))?;
            Ok(values.iter().map(|v| v.map(str::to_owned)).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use schemas::tables::DESCRIPTIONS;

    use super::*;

    #[test]
    fn text_columns_round_trip_with_their_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("descriptions.parquet");
        let rows = vec![
            vec!["a".into(), "first".into(), Cell::Null, "c".into(), Cell::Null],
            vec!["b".into(), "second".into(), "scene".into(), Cell::Null, Cell::Null],
        ];
        write(&path, &DESCRIPTIONS, &rows).unwrap();
        let read = read_text_columns(&path, &DESCRIPTIONS, &["level", "id"]).unwrap();
        assert_eq!(read, vec![vec![None, Some("scene".to_owned())], vec![Some("a".to_owned()), Some("b".to_owned())]]);
    }

    #[test]
    fn a_missing_column_or_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("descriptions.parquet");
        let err = read_text_columns(&path, &DESCRIPTIONS, &["id"]).unwrap_err().to_string();
        assert!(err.contains("descriptions.parquet") && err.contains("opening"), "{err}");
        write(&path, &DESCRIPTIONS, &[vec!["a".into(), "x".into(), Cell::Null, Cell::Null, Cell::Null]]).unwrap();
        let err = read_text_columns(&path, &DESCRIPTIONS, &["tags"]).unwrap_err().to_string();
        assert!(err.contains("`tags`"), "{err}");
        // A null in a non-null column is refused before anything is written.
        let err = write(&path, &DESCRIPTIONS, &[vec![Cell::Null, "x".into(), Cell::Null, Cell::Null, Cell::Null]]).unwrap_err().to_string();
        assert!(err.contains("`id`"), "{err}");
    }
}

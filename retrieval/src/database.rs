//! The description database: read from JSON Lines, CSV or plain text, checked (no empty text,
//! no repeated id — each error names the file and line), stored as Parquet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::RetrievalError;

/// One description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Unique id.
    pub id: String,
    /// The text that is embedded and handed to the prompter.
    pub text: String,
    /// Semantic level (e.g. `scene`, `object`).
    #[serde(default)]
    pub level: Option<String>,
    /// Category tag.
    #[serde(default)]
    pub category: Option<String>,
    /// Where it came from.
    #[serde(default)]
    pub source: Option<String>,
}

fn input(path: &Path, reason: impl Into<String>) -> RetrievalError {
    RetrievalError::Input { path: path.to_owned(), reason: reason.into() }
}

/// Splits one CSV line (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(f) = fields.last_mut() {
                    f.push('"');
                }
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

/// Reads one input file: `.jsonl` (one description object per line), `.csv` (a header with
/// `text` and optionally `id`, `level`, `category`, `source`) or anything else as plain text
/// (one description per non-empty line). Missing ids become `FILE_STEM:LINE`.
///
/// # Errors
/// [`RetrievalError::Input`] naming the file and line.
pub fn read_file(path: &Path) -> Result<Vec<Description>, RetrievalError> {
    let text = std::fs::read_to_string(path).map_err(|e| input(path, format!("cannot read: {e}")))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut out = Vec::new();
    match extension.as_str() {
        "jsonl" | "ndjson" => {
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let d: Description = serde_json::from_str(line).map_err(|e| input(path, format!("line {}: {e}", n + 1)))?;
                out.push((n + 1, d));
            }
        }
        "csv" => {
            let mut lines = text.lines().enumerate();
            let header: Vec<String> = lines.next().map(|(_, h)| csv_fields(h)).unwrap_or_default();
            let column = |name: &str| header.iter().position(|h| h.trim() == name);
            let text_column = column("text").ok_or_else(|| input(path, format!("the header has no `text` column (found {header:?})")))?;
            for (n, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
                let fields = csv_fields(line);
                let get = |c: Option<usize>| c.and_then(|c| fields.get(c)).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
                out.push((
                    n + 1,
                    Description {
                        id: get(column("id")).unwrap_or_else(|| format!("{stem}:{}", n + 1)),
                        text: get(Some(text_column)).unwrap_or_default(),
                        level: get(column("level")),
                        category: get(column("category")),
                        source: get(column("source")),
                    },
                ));
            }
        }
        _ => {
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let text = line.trim().to_owned();
                out.push((
                    n + 1,
                    Description { id: format!("{stem}:{}", n + 1), text, level: None, category: None, source: Some(stem.clone()) },
                ));
            }
        }
    }
    if let Some((n, d)) = out.iter().find(|(_, d)| d.text.trim().is_empty()) {
        return Err(input(path, format!("line {n}: description `{}` has an empty text", d.id)));
    }
    Ok(out.into_iter().map(|(_, d)| d).collect())
}

/// Reads and merges input files, refusing repeated ids.
///
/// # Errors
/// [`RetrievalError::Input`] for unreadable files, empty texts and repeated ids.
pub fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Description>, RetrievalError> {
    let mut all = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in paths {
        for d in read_file(path)? {
            if let Some(first) = seen.insert(d.id.clone(), path.clone()) {
                return Err(input(path, format!("id `{}` appears twice (first in `{}`)", d.id, first.display())));
            }
            all.push(d);
        }
    }
    if all.is_empty() {
        return Err(RetrievalError::Input { path: paths.first().cloned().unwrap_or_default(), reason: "no descriptions".into() });
    }
    Ok(all)
}

fn optional(column: &str, values: Vec<Option<String>>) -> Column {
    Column::new(column.into(), values)
}

/// Writes the database as Parquet.
///
/// # Errors
/// [`RetrievalError::Index`] when the file cannot be written.
pub fn write_parquet(path: &Path, descriptions: &[Description]) -> Result<(), RetrievalError> {
    let fail = |e: &dyn std::fmt::Display| RetrievalError::Index { path: path.to_owned(), reason: e.to_string() };
    let mut frame = DataFrame::new(
        descriptions.len(),
        vec![
            Column::new("id".into(), descriptions.iter().map(|d| d.id.clone()).collect::<Vec<_>>()),
            Column::new("text".into(), descriptions.iter().map(|d| d.text.clone()).collect::<Vec<_>>()),
            optional("level", descriptions.iter().map(|d| d.level.clone()).collect()),
            optional("category", descriptions.iter().map(|d| d.category.clone()).collect()),
            optional("source", descriptions.iter().map(|d| d.source.clone()).collect()),
        ],
    )
    .map_err(|e| fail(&e))?;
    let file = std::fs::File::create(path).map_err(|e| fail(&e))?;
    ParquetWriter::new(file).finish(&mut frame).map_err(|e| fail(&e))?;
    Ok(())
}

/// Reads the database back.
///
/// # Errors
/// [`RetrievalError::Index`] for a missing or malformed file.
pub fn read_parquet(path: &Path) -> Result<Vec<Description>, RetrievalError> {
    let fail = |e: &dyn std::fmt::Display| RetrievalError::Index { path: path.to_owned(), reason: e.to_string() };
    let file = std::fs::File::open(path).map_err(|e| fail(&e))?;
    let frame = ParquetReader::new(file).finish().map_err(|e| fail(&e))?;
    let strings = |name: &str| -> Result<Vec<Option<String>>, RetrievalError> {
        let column = frame.column(name).map_err(|e| fail(&e))?;
        let values = column.str().map_err(|e| fail(&e))?;
        Ok(values.iter().map(|v| v.map(str::to_owned)).collect())
    };
    let (ids, texts, levels, categories, sources) =
        (strings("id")?, strings("text")?, strings("level")?, strings("category")?, strings("source")?);
    Ok(ids
        .into_iter()
        .zip(texts)
        .zip(levels)
        .zip(categories)
        .zip(sources)
        .map(|((((id, text), level), category), source)| Description {
            id: id.unwrap_or_default(),
            text: text.unwrap_or_default(),
            level,
            category,
            source,
        })
        .collect())
}

//! The description database: read from JSON Lines, CSV or plain text, checked (no empty text,
//! no repeated id — each error names the file and line), stored as Parquet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use schemas::tables::DESCRIPTIONS;
use serde::{Deserialize, Serialize};
use tables::Cell;

use crate::RetrievalError;

/// One description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Unique id (`FILE_STEM:LINE` when an input leaves it out).
    #[serde(default)]
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
                let mut d: Description = serde_json::from_str(line).map_err(|e| {
                    // serde's own position counts within this one line; say the file's line.
                    let message = e.to_string();
                    let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
                    input(path, format!("line {}, column {}: {message}", n + 1, e.column()))
                })?;
                if d.id.trim().is_empty() {
                    d.id = format!("{stem}:{}", n + 1);
                }
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

/// Writes the database as Parquet.
///
/// # Errors
/// [`RetrievalError::Index`] when the file cannot be written.
pub fn write_parquet(path: &Path, descriptions: &[Description]) -> Result<(), RetrievalError> {
    let rows: Vec<Vec<Cell>> = descriptions
        .iter()
        .map(|d| {
            vec![d.id.as_str().into(), d.text.as_str().into(), d.level.clone().into(), d.category.clone().into(), d.source.clone().into()]
        })
        .collect();
    tables::parquet::write(path, &DESCRIPTIONS, &rows).map_err(|e| RetrievalError::Index { path: path.to_owned(), reason: e.to_string() })
}

/// Reads the database back.
///
/// # Errors
/// [`RetrievalError::Index`] for a missing or malformed file.
pub fn read_parquet(path: &Path) -> Result<Vec<Description>, RetrievalError> {
    let names: Vec<&str> = DESCRIPTIONS.columns.iter().map(|c| c.name).collect();
    let columns = tables::parquet::read_text_columns(path, &DESCRIPTIONS, &names).map_err(|e| RetrievalError::Index {
        path: path.to_owned(),
        // The path is the index error's own; the table error's words without it.
        reason: match e {
            tables::TableError::Io { action, source, .. } => format!("{action}: {source}"),
            other => other.to_string(),
        },
    })?;
    let [ids, texts, levels, categories, sources]: [Vec<Option<String>>; 5] = columns
        .try_into()
        .map_err(|_| RetrievalError::Index { path: path.to_owned(), reason: "the database does not have five columns".to_owned() })?;
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

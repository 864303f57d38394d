//! Answer files from any model, and their references, as JSON Lines:
//!
//! - predictions: `{"id": "...", "answer": "text"}` — for grounding the answer may also be a
//!   pixel box `[x1, y1, x2, y2]`, or text with a `<box>[x1, y1, x2, y2]</box>` tag on the
//!   0–1000 grid (then the reference needs `"image_size": [width, height]`);
//! - references: `{"id": "...", "references": [...]}` with optional `"type"` (VQA question
//!   type) and `"classes"` (classification candidates; default: every reference label in the
//!   file).
//!
//! Every malformed line is reported with its file and line number.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EvalError;

/// One prediction line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prediction {
    /// Sample id.
    pub id: String,
    /// Text, or a pixel box for grounding.
    pub answer: Value,
    /// The model's confidence in the whole answer, when it reported one: detection AP ranks
    /// boxes by it when they have no score of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The confidence of each `<box>` of a text answer, in answer order (well-formed boxes
    /// only, as `model::tasks::parse_boxes` reads them); detection AP ranks boxes by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_scores: Option<Vec<f64>>,
}

/// One reference line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Sample id.
    pub id: String,
    /// Accepted answers / captions / the class, or boxes for grounding.
    pub references: Vec<Value>,
    /// Question type (VQA), or the label asked for (detection).
    #[serde(skip_serializing_if = "Option::is_none", default, rename = "type")]
    pub kind: Option<String>,
    /// Candidate classes (classification).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub classes: Option<Vec<String>>,
    /// Image `[width, height]` in pixels (grounding answers on the 0–1000 grid).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_size: Option<[u32; 2]>,
    /// The image file, for information.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image: Option<String>,
    /// The query given to the model, for information.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub query: Option<String>,
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path, id: impl Fn(&T) -> &str) -> Result<Vec<T>, EvalError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| EvalError::Input { path: path.to_owned(), reason: format!("cannot read: {e}") })?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: T = serde_json::from_str(line)
            .map_err(|e| EvalError::Input { path: path.to_owned(), reason: format!("line {}: {e}", number + 1) })?;
        if !seen.insert(id(&item).to_owned()) {
            return Err(EvalError::Input {
                path: path.to_owned(),
                reason: format!("line {}: id `{}` appears twice", number + 1, id(&item)),
            });
        }
        out.push(item);
    }
    Ok(out)
}

/// Reads a predictions file.
///
/// # Errors
/// [`EvalError::Input`] naming the line of a malformed entry or a repeated id.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>, EvalError> {
    read_lines(path, |p: &Prediction| &p.id)
}

/// Reads a references file.
///
/// # Errors
/// [`EvalError::Input`] naming the line of a malformed entry or a repeated id.
pub fn read_references(path: &Path) -> Result<Vec<Reference>, EvalError> {
    read_lines(path, |r: &Reference| &r.id)
}

/// References paired with their predictions (`None` when the model gave none), plus the ids of
/// predictions without a reference.
pub fn join<'a>(predictions: &'a [Prediction], references: &'a [Reference]) -> (Vec<(&'a Reference, Option<&'a Prediction>)>, Vec<String>) {
    let by_id: BTreeMap<&str, &Prediction> = predictions.iter().map(|p| (p.id.as_str(), p)).collect();
    let known: HashSet<&str> = references.iter().map(|r| r.id.as_str()).collect();
    let pairs = references.iter().map(|r| (r, by_id.get(r.id.as_str()).copied())).collect();
    let extra = predictions.iter().filter(|p| !known.contains(p.id.as_str())).map(|p| p.id.clone()).collect();
    (pairs, extra)
}

/// The answer as text (a JSON string; anything else in its JSON form).
pub fn answer_text(answer: &Value) -> String {
    match answer {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A pixel box from a JSON array of four numbers `[x1, y1, x2, y2]`, top-left corner first.
///
/// `None` for anything else, including an array whose corners are swapped or whose box has no
/// area (`x1 ≥ x2` or `y1 ≥ y2`): the same rule as the `<box>` grammar
/// ([`model::tasks::parse_boxes`]), so every accepted format is read one way and a swapped
/// answer counts as a parse failure instead of a silently wrong box.
pub fn as_box(value: &Value) -> Option<[f64; 4]> {
    let items = value.as_array()?;
    if items.len() != 4 {
        return None;
    }
    let numbers: Vec<f64> = items.iter().filter_map(Value::as_f64).collect();
    let [x1, y1, x2, y2] = <[f64; 4]>::try_from(numbers).ok()?;
    (x1 < x2 && y1 < y2).then_some([x1, y1, x2, y2])
}

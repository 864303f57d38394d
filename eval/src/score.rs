//! Scores an answer file against its references for one task and lays the result out as the
//! paper-style table (or JSON).

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::answers::{answer_text, as_box, join, Prediction, Reference};
use crate::bertscore::BertScorer;
use crate::grounding::{GroundingScore, Size};
use crate::protocol::{self, CaptionOptions, Protocol, ReferenceAggregate};
use crate::wordnet::WordNet;
use crate::{accuracy, rouge, EvalError};

/// What is being scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Captioning: BLEU, METEOR, ROUGE, CIDEr-D, BERTScore.
    Caption,
    /// Visual question answering: accuracy per question type.
    Vqa,
    /// Scene classification: accuracy, per class.
    Classify,
    /// Visual grounding: Acc@0.5 by box size, mean IoU.
    Ground,
    /// Object detection, one sample per image and label: AP@0.5 (VOC), precision and recall
    /// per label, false detections on images without the label ([`crate::detection`]).
    Detect,
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "caption" => Ok(Self::Caption),
            "vqa" => Ok(Self::Vqa),
            "classify" => Ok(Self::Classify),
            "ground" => Ok(Self::Ground),
            "detect" => Ok(Self::Detect),
            other => Err(format!("unknown task `{other}` (caption, vqa, classify, ground, detect)")),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// Metric name as papers print it.
    pub name: String,
    /// Its value (accuracies and caption metrics in [0, 1], CIDEr-D unbounded).
    pub value: f64,
    /// How many samples it covers.
    pub count: usize,
    /// Whether `value` counts something (parse failures) rather than measuring a rate: the
    /// table prints it as a whole number.
    #[serde(skip)]
    pub is_count: bool,
}

/// A scored answer file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The task.
    pub task: Task,
    /// How the numbers were computed: the caption protocol (`coco`, `rs-lvlm`) or the answer
    /// matching rule of the task, in one line. Printed above every table.
    pub protocol: String,
    /// The metrics, in table order.
    pub metrics: Vec<Metric>,
    /// What a reader of the numbers must know: text a reference implementation drops, words
    /// a tokenizer cannot split. Printed under the table as `warning:` lines.
    pub warnings: Vec<String>,
    /// References without a prediction (scored as empty answers).
    pub missing: usize,
    /// Prediction ids without a reference (ignored).
    pub extra: Vec<String>,
}

impl Report {
    /// A plain-text table.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let width = self.metrics.iter().map(|m| m.name.len()).max().unwrap_or(6).max(6);
        let _ = writeln!(out, "protocol: {}", self.protocol);
        let _ = writeln!(out, "{:<width$}  {:>9}  {:>7}", "metric", "value", "n");
        for m in &self.metrics {
            if m.is_count {
                let _ = writeln!(out, "{:<width$}  {:>9}  {:>7}", m.name, m.value, m.count);
            } else {
                let _ = writeln!(out, "{:<width$}  {:>9.4}  {:>7}", m.name, m.value, m.count);
            }
        }
        if self.missing > 0 {
            let _ = writeln!(out, "{} references had no prediction and were scored as empty answers", self.missing);
        }
        if !self.extra.is_empty() {
            let _ = writeln!(out, "{} predictions had no reference and were ignored (e.g. `{}`)", self.extra.len(), self.extra[0]);
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The caption protocol and its optional heavy scorers.
#[derive(Debug, Clone, Copy)]
pub struct CaptionScorers<'a> {
    /// Which caption evaluation recipe ([`Protocol`]; default `coco`).
    pub protocol: Protocol,
    /// BERTScore encoder (skipped when absent).
    pub bertscore: Option<&'a BertScorer>,
    /// WordNet for METEOR's synonym stage (exact and stem matching only when absent).
    pub wordnet: Option<&'a WordNet>,
    /// Porter-stem ROUGE tokens (rouge-score's `use_stemmer`; `rs-lvlm`, default on).
    pub rouge_stemmer: bool,
    /// ROUGE over several references (`rs-lvlm`, default the best one).
    pub rouge_references: ReferenceAggregate,
}

impl Default for CaptionScorers<'_> {
    fn default() -> Self {
        Self { protocol: Protocol::Coco, bertscore: None, wordnet: None, rouge_stemmer: true, rouge_references: ReferenceAggregate::Max }
    }
}

impl<'a> CaptionScorers<'a> {
    fn options(&self) -> CaptionOptions<'a> {
        CaptionOptions { wordnet: self.wordnet, rouge_stemmer: self.rouge_stemmer, rouge_references: self.rouge_references }
    }
}

/// The line naming how a task's numbers are computed ([`Report::protocol`]).
fn protocol_line(task: Task, scorers: &CaptionScorers<'_>) -> String {
    match task {
        Task::Caption => scorers.protocol.describe(&scorers.options()),
        Task::Vqa => "vqa: exact match after the official VQA answer normalisation (punctuation, number words to digits, \
                      articles, contractions)"
            .to_owned(),
        Task::Classify => "classify: the longest candidate class named in the answer as whole words, after VQA normalisation".to_owned(),
        Task::Ground => "ground: IoU >= 0.5 with the reference box; sizes by reference box area".to_owned(),
        Task::Detect => "detect: PASCAL VOC AP@0.5 (all-point; IoU > 0.5 in integer pixels, greedy by score), per label; \
                         each box scored by its own tokens, else by the answer's score"
            .to_owned(),
    }
}

fn metric(name: &str, value: f64, count: usize) -> Metric {
    Metric { name: name.to_owned(), value, count, is_count: false }
}

/// A metric that counts (printed as a whole number).
fn tally(name: &str, value: usize, count: usize) -> Metric {
    Metric { name: name.to_owned(), value: value as f64, count, is_count: true }
}

fn strings(values: &[Value]) -> Vec<String> {
    values.iter().map(answer_text).collect()
}

/// Scores `predictions` against `references`.
///
/// # Errors
/// [`EvalError::Input`] when references do not fit the task (e.g. a grounding reference
/// without a box).
pub fn score(task: Task, predictions: &[Prediction], references: &[Reference], scorers: CaptionScorers<'_>) -> Result<Report, EvalError> {
    let (pairs, extra) = join(predictions, references);
    let missing = pairs.iter().filter(|(_, p)| p.is_none()).count();
    let answer = |p: Option<&Prediction>| p.map(|p| answer_text(&p.answer)).unwrap_or_default();
    let n = pairs.len();
    let mut warnings = Vec::new();
    let metrics = match task {
        Task::Classify => {
            let mut classes: Vec<String> =
                references.iter().flat_map(|r| r.classes.clone().unwrap_or_else(|| strings(&r.references))).collect();
            classes.sort();
            classes.dedup();
            let answers: Vec<(String, String)> =
                pairs.iter().map(|(r, p)| (answer(*p), r.references.first().map(answer_text).unwrap_or_default())).collect();
            let s = accuracy::classification(answers.iter().map(|(a, r)| (a.as_str(), r.as_str())), &classes);
            let mut rows = vec![metric("accuracy", s.overall.accuracy(), n), metric("mean class accuracy", s.mean_class_accuracy(), n)];
            rows.extend(s.per_class.iter().map(|(class, t)| metric(&format!("accuracy[{class}]"), t.accuracy(), t.total)));
            rows.push(tally("parse failures", s.parse_failures, n));
            rows
        }
        Task::Vqa => {
            let items: Vec<(String, Vec<String>, Option<String>)> =
                pairs.iter().map(|(r, p)| (answer(*p), strings(&r.references), r.kind.clone())).collect();
            let s = accuracy::vqa(items.iter().map(|(a, refs, k)| (a.as_str(), refs.as_slice(), k.as_deref())));
            let mut rows: Vec<Metric> =
                s.per_type.iter().map(|(kind, t)| metric(&format!("accuracy[{kind}]"), t.accuracy(), t.total)).collect();
            rows.push(metric("average accuracy", s.average_accuracy(), n));
            rows.push(metric("overall accuracy", s.overall.accuracy(), n));
            rows
        }
        Task::Ground => {
            let mut s = GroundingScore::default();
            for (r, p) in &pairs {
                let reference = r.references.first().and_then(as_box).ok_or_else(|| EvalError::Input {
                    path: format!("reference `{}`", r.id).into(),
                    reason: "a grounding reference needs a box `[x1, y1, x2, y2]` in pixels with x1 < x2 and y1 < y2".into(),
                })?;
                let predicted = p.and_then(|p| predicted_box(&p.answer, r.image_size));
                s.add(predicted.as_ref(), &reference);
            }
            let mut rows = vec![metric("Acc@0.5", s.accuracy(), n)];
            for size in [Size::Small, Size::Medium, Size::Large] {
                if let Some(value) = s.accuracy_for(size) {
                    rows.push(metric(&format!("Acc@0.5[{}]", size.name()), value, s.by_size[size as usize].1));
                }
            }
            rows.push(metric("mean IoU", s.mean_iou(), n));
            rows.push(tally("parse failures", s.parse_failures, n));
            rows
        }
        Task::Detect => {
            let (rows, detection_warnings) = detection_metrics(&pairs, n)?;
            warnings = detection_warnings;
            rows
        }
        Task::Caption => {
            let (rows, caption_warnings) = caption_metrics(&pairs, scorers)?;
            warnings = caption_warnings;
            rows
        }
    };
    Ok(Report { task, protocol: protocol_line(task, &scorers), metrics, warnings, missing, extra })
}

/// A predicted box: a pixel array, a grid `<box>` tag (needs the image size), or a pixel list
/// written as text.
fn predicted_box(answer: &Value, image_size: Option<[u32; 2]>) -> Option<[f64; 4]> {
    if let Some(b) = as_box(answer) {
        return Some(b);
    }
    let text = answer.as_str()?;
    if text.contains("<box>") {
        let [w, h] = image_size?;
        return model::tasks::parse_boxes(text).boxes.first().map(|b| b.to_pixels(w, h));
    }
    serde_json::from_str::<Value>(text.trim()).ok().as_ref().and_then(as_box)
}

/// Detection rows: mAP@0.5 over the labels with truth boxes, then per label (the reference's
/// `type`) AP@0.5, precision, recall and false detections per image without the label, and
/// the answers whose box text was malformed (their well-formed boxes still count). Warns of
/// `box_scores` that do not match the boxes (those boxes rank by the answer's score) and of
/// grid boxes that cannot be placed without the reference's `image_size`.
fn detection_metrics(pairs: &[(&Reference, Option<&Prediction>)], n: usize) -> Result<(Vec<Metric>, Vec<String>), EvalError> {
    use crate::detection::{evaluate, Detection};
    let mut warnings = Vec::new();
    let mut labels: Vec<&str> = pairs.iter().map(|(r, _)| r.kind.as_deref().unwrap_or("object")).collect();
    labels.sort_unstable();
    labels.dedup();
    let mut rows = Vec::new();
    let (mut per_label, mut failures, mut absent_images, mut absent_detections) = (Vec::new(), 0, 0, 0);
    for label in labels {
        let (mut truths, mut detections) = (Vec::new(), Vec::new());
        for (r, p) in pairs.iter().filter(|(r, _)| r.kind.as_deref().unwrap_or("object") == label) {
            let boxes = r
                .references
                .iter()
                .map(|b| {
                    as_box(b).ok_or_else(|| EvalError::Input {
                        path: format!("reference `{}`", r.id).into(),
                        reason: format!(
                            "a detection reference holds boxes `[x1, y1, x2, y2]` in pixels with x1 < x2 and y1 < y2, not `{b}`"
                        ),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let image = truths.len();
            truths.push(boxes);
            let Some(p) = p else { continue };
            if r.image_size.is_none() && p.answer.as_str().is_some_and(|a| a.contains("<box>")) {
                warnings.push(format!(
                    "`{}`: `<box>` answers are on the 0–1000 grid and the reference gives no `image_size` to place them; counted as parse failures",
                    r.id
                ));
            }
            let (predicted, malformed) = predicted_boxes(&p.answer, r.image_size);
            failures += usize::from(malformed);
            // A box's own score when the answer carries one per box (the same parse rule drops
            // the same malformed boxes, so the i-th score is the i-th box's), else the answer's.
            let answer_score = p.score.unwrap_or(1.0);
            let box_scores = p.box_scores.as_deref().filter(|s| s.len() == predicted.len());
            if let Some(given) = p.box_scores.as_ref().filter(|s| s.len() != predicted.len()) {
                warnings.push(format!(
                    "`{}`: {} box_scores for {} well-formed boxes; its boxes rank by the answer's score",
                    p.id,
                    given.len(),
                    predicted.len()
                ));
            }
            detections.extend(predicted.into_iter().enumerate().map(|(i, bbox)| Detection {
                image,
                bbox,
                score: box_scores.map_or(answer_score, |s| s[i]),
            }));
        }
        let s = evaluate(&truths, &detections);
        let count = truths.len();
        if let Some(ap) = s.average_precision {
            per_label.push(ap);
            rows.push(metric(&format!("AP@0.5[{label}]"), ap, count));
        }
        if let Some(precision) = s.precision() {
            rows.push(metric(&format!("precision[{label}]"), precision, s.detections));
        }
        if let Some(recall) = s.recall() {
            rows.push(metric(&format!("recall[{label}]"), recall, s.truths));
        }
        if let Some(rate) = s.false_detections_per_absent_image() {
            rows.push(metric(&format!("false detections per image without it[{label}]"), rate, s.images_without));
        }
        absent_images += s.images_without;
        absent_detections += s.detections_where_absent;
    }
    let mut head = Vec::new();
    if !per_label.is_empty() {
        head.push(metric("mAP@0.5", per_label.iter().sum::<f64>() / per_label.len() as f64, n));
    }
    if absent_images > 0 {
        head.push(metric("false detections per image without the label", absent_detections as f64 / absent_images as f64, absent_images));
    }
    head.extend(rows);
    head.push(tally("parse failures", failures, n));
    Ok((head, warnings))
}

/// Every predicted box of a detection answer and whether some of it was malformed: a JSON
/// array of pixel boxes (VOC's inclusive pixels, as the references), `<box>` tags on the
/// 0–1000 grid (needs the image size; a grid box ends where its last pixel ends, so that pixel
/// is one before its right and bottom edges), or a pixel box list written as text. An answer in
/// words with no box names no object (an empty answer is the right one where the label is
/// absent).
fn predicted_boxes(answer: &Value, image_size: Option<[u32; 2]>) -> (Vec<[f64; 4]>, bool) {
    let from_array = |items: &[Value]| {
        let boxes: Vec<[f64; 4]> = items.iter().filter_map(as_box).collect();
        let malformed = boxes.len() != items.len();
        (boxes, malformed)
    };
    if let Some(items) = answer.as_array() {
        // A single box `[x1, y1, x2, y2]`, or a list of them.
        return match as_box(answer) {
            Some(b) => (vec![b], false),
            None => from_array(items),
        };
    }
    let text = answer_text(answer);
    if text.contains("<box>") {
        let parsed = model::tasks::parse_boxes(&text);
        return match image_size {
            Some([w, h]) => (
                parsed
                    .boxes
                    .iter()
                    .map(|b| {
                        let [x1, y1, x2, y2] = b.to_pixels(w, h);
                        [x1, y1, x2 - 1.0, y2 - 1.0]
                    })
                    .collect(),
                !parsed.errors.is_empty(),
            ),
            None => (Vec::new(), true),
        };
    }
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(value @ Value::Array(_)) => predicted_boxes(&value, image_size),
        _ => (Vec::new(), false),
    }
}

fn caption_metrics(
    pairs: &[(&Reference, Option<&Prediction>)],
    scorers: CaptionScorers<'_>,
) -> Result<(Vec<Metric>, Vec<String>), EvalError> {
    let n = pairs.len();
    let candidates: Vec<String> = pairs.iter().map(|(_, p)| p.map(|p| answer_text(&p.answer)).unwrap_or_default()).collect();
    let references: Vec<Vec<String>> = pairs.iter().map(|(r, _)| strings(&r.references)).collect();
    let scores = protocol::caption_scores(scorers.protocol, &candidates, &references, &scorers.options());
    let mut rows: Vec<Metric> = scores.rows.iter().map(|(name, value)| metric(name, *value, n)).collect();
    if let Some(scorer) = scorers.bertscore {
        let scores = scorer.score(&candidates, &references, None)?;
        let mean = |values: &[f64]| if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
        let pick = |f: fn(&rouge::Prf) -> f64| mean(&scores.iter().map(f).collect::<Vec<_>>());
        rows.push(metric("BERTScore P", pick(|s| s.precision), n));
        rows.push(metric("BERTScore R", pick(|s| s.recall), n));
        rows.push(metric("BERTScore F1", pick(|s| s.fmeasure), n));
    }
    Ok((rows, scores.warnings))
}

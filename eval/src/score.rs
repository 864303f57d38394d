//! Scores an answer file against its references for one task and lays the result out as the
//! paper-style table (or JSON).

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::answers::{answer_text, as_box, join, Prediction, Reference};
use crate::bertscore::BertScorer;
use crate::grounding::{GroundingScore, Size};
use crate::wordnet::WordNet;
use crate::{accuracy, bleu, cider, meteor, rouge, text, EvalError};

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
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "caption" => Ok(Self::Caption),
            "vqa" => Ok(Self::Vqa),
            "classify" => Ok(Self::Classify),
            "ground" => Ok(Self::Ground),
            other => Err(format!("unknown task `{other}` (caption, vqa, classify, ground)")),
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
}

/// A scored answer file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The task.
    pub task: Task,
    /// The metrics, in table order.
    pub metrics: Vec<Metric>,
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
        let _ = writeln!(out, "{:<width$}  {:>9}  {:>7}", "metric", "value", "n");
        for m in &self.metrics {
            let _ = writeln!(out, "{:<width$}  {:>9.4}  {:>7}", m.name, m.value, m.count);
        }
        if self.missing > 0 {
            let _ = writeln!(out, "{} references had no prediction and were scored as empty answers", self.missing);
        }
        if !self.extra.is_empty() {
            let _ = writeln!(out, "{} predictions had no reference and were ignored (e.g. `{}`)", self.extra.len(), self.extra[0]);
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Optional heavy scorers for captions.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaptionScorers<'a> {
    /// BERTScore encoder (skipped when absent).
    pub bertscore: Option<&'a BertScorer>,
    /// WordNet for METEOR's synonym stage (exact and stem matching only when absent).
    pub wordnet: Option<&'a WordNet>,
    /// Porter-stem ROUGE tokens (rouge-score's `use_stemmer`).
    pub rouge_stemmer: bool,
}

fn metric(name: &str, value: f64, count: usize) -> Metric {
    Metric { name: name.to_owned(), value, count }
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
            rows.push(metric("parse failures", s.parse_failures as f64, n));
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
                    reason: "a grounding reference needs a box `[x1, y1, x2, y2]`".into(),
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
            rows.push(metric("parse failures", s.parse_failures as f64, n));
            rows
        }
        Task::Caption => caption_metrics(&pairs, scorers)?,
    };
    Ok(Report { task, metrics, missing, extra })
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

fn caption_metrics(pairs: &[(&Reference, Option<&Prediction>)], scorers: CaptionScorers<'_>) -> Result<Vec<Metric>, EvalError> {
    let n = pairs.len();
    let candidates: Vec<String> = pairs.iter().map(|(_, p)| p.map(|p| answer_text(&p.answer)).unwrap_or_default()).collect();
    let references: Vec<Vec<String>> = pairs.iter().map(|(r, _)| strings(&r.references)).collect();
    let cand_tokens: Vec<Vec<String>> = candidates.iter().map(|c| text::tokenize(c)).collect();
    let ref_tokens: Vec<Vec<Vec<String>>> = references.iter().map(|refs| refs.iter().map(|r| text::tokenize(r)).collect()).collect();
    let b = bleu::bleu(&cand_tokens, &ref_tokens);
    let mean = |values: &[f64]| if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
    let meteor: Vec<f64> = cand_tokens.iter().zip(&ref_tokens).map(|(c, r)| meteor::meteor(r, c, scorers.wordnet)).collect();
    let rouge_cands: Vec<Vec<String>> = candidates.iter().map(|c| rouge::tokens(c, scorers.rouge_stemmer)).collect();
    let rouge_refs: Vec<Vec<Vec<String>>> =
        references.iter().map(|refs| refs.iter().map(|r| rouge::tokens(r, scorers.rouge_stemmer)).collect()).collect();
    let rouge1: Vec<f64> = rouge_cands.iter().zip(&rouge_refs).map(|(c, r)| rouge::best_of(r, c, rouge::rouge1).fmeasure).collect();
    let rouge_l: Vec<f64> = rouge_cands.iter().zip(&rouge_refs).map(|(c, r)| rouge::best_of(r, c, rouge::rouge_l).fmeasure).collect();
    let (cider, _) = cider::cider_d(&cand_tokens, &ref_tokens);
    let mut rows = vec![
        metric("BLEU-1", b.corpus[0], n),
        metric("BLEU-2", b.corpus[1], n),
        metric("BLEU-3", b.corpus[2], n),
        metric("BLEU-4", b.corpus[3], n),
        metric(if scorers.wordnet.is_some() { "METEOR" } else { "METEOR (no WordNet)" }, mean(&meteor), n),
        metric("ROUGE-1", mean(&rouge1), n),
        metric("ROUGE-L", mean(&rouge_l), n),
        metric("CIDEr-D", cider, n),
    ];
    if let Some(scorer) = scorers.bertscore {
        let scores = scorer.score(&candidates, &references, None)?;
        let pick = |f: fn(&rouge::Prf) -> f64| mean(&scores.iter().map(f).collect::<Vec<_>>());
        rows.push(metric("BERTScore P", pick(|s| s.precision), n));
        rows.push(metric("BERTScore R", pick(|s| s.recall), n));
        rows.push(metric("BERTScore F1", pick(|s| s.fmeasure), n));
    }
    Ok(rows)
}

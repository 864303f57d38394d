//! Evaluation for remote-sensing vision-language models: the metrics papers report, each
//! checked against its reference implementation (`eval/tests/reference.rs`, fixtures made by
//! `scripts/fixtures/make_metric_golden.py`), readers for the public benchmarks' published
//! layouts, and scoring of answer files from any model.
//!
//! | metric | reference |
//! | --- | --- |
//! | BLEU-1..4 | pycocoevalcap 1.2 `Bleu` (closest reference length) |
//! | ROUGE-1, ROUGE-L | rouge-score 0.1.2 (F-measure, best reference) |
//! | METEOR | nltk 3.9.2 `meteor_score` with WordNet 3.0 |
//! | CIDEr-D | pycocoevalcap 1.2 `Cider` |
//! | BERTScore | bert-score 0.3.12 (same encoder, last layer, no IDF by default) |
//! | accuracy, IoU, Acc@0.5 | definitions in [`accuracy`] and [`grounding`] |

pub mod accuracy;
pub mod answers;
pub mod bertscore;
pub mod bleu;
pub mod cider;
pub mod grounding;
pub mod meteor;
pub mod porter;
pub mod readers;
pub mod rouge;
pub mod score;
pub mod text;
pub mod wordnet;

use std::path::PathBuf;

/// Errors of the evaluation crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// An input file or folder is missing or not in the expected layout.
    #[error("`{}`: {reason}", path.display())]
    Input {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong, and what was expected.
        reason: String,
    },
    /// The model failed.
    #[error(transparent)]
    Model(#[from] model::ModelError),
}

pub use model::assets_dir;

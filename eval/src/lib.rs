//! Evaluation for remote-sensing vision-language models: the metrics papers report, each
//! checked against its reference implementation (`eval/tests/reference.rs`, fixtures made by
//! `scripts/fixtures/make_metric_golden.py`), readers for the public benchmarks' published
//! layouts, and scoring of answer files from any model.
//!
//! | metric | reference |
//! | --- | --- |
//! | BLEU-1..4 | pycocoevalcap 1.2 `Bleu` (closest reference length) |
//! | ROUGE-L (`coco`) | pycocoevalcap 1.2 `Rouge` (β = 1.2) |
//! | ROUGE-1, ROUGE-L (`rs-lvlm`) | rouge-score 0.1.2 (F-measure, best or mean reference) |
//! | METEOR | nltk 3.9.2 `meteor_score` with WordNet 3.0 |
//! | CIDEr-D | pycocoevalcap 1.2 `Cider` |
//! | BERTScore | bert-score 0.3.12 (same encoder, last layer, no IDF by default) |
//! | PTB tokens (`coco`) | Stanford CoreNLP 3.4.1 `PTBTokenizer` as pycocoevalcap runs it |
//! | word tokens (`rs-lvlm`) | nltk 3.9.2 `word_tokenize` |
//! | VQA answers | the official VQA evaluation's answer normalisation |
//! | accuracy, IoU, Acc@0.5 | definitions in [`accuracy`] and [`grounding`] |
//!
//! Which tokenizer feeds which metric is a named [`protocol::Protocol`], printed with every
//! table. [`bench::run_benchmark`] runs a model artifact over a benchmark folder and scores it
//! (`strata eval`).

pub mod accuracy;
pub mod answers;
pub mod bench;
pub mod bertscore;
pub mod bleu;
pub mod cider;
pub mod detection;
pub mod grounding;
pub mod meteor;
pub mod nltk_tokenize;
pub mod porter;
pub mod protocol;
pub mod ptb;
pub mod readers;
pub mod retrieval;
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
    /// The index or its encoder failed.
    #[error(transparent)]
    Retrieval(#[from] ::retrieval::RetrievalError),
    /// An output file cannot be written.
    #[error("`{}`: {reason}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

pub use model::assets_dir;

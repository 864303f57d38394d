//! Caption evaluation protocols. The numbers a paper prints depend on the tokenizer its
//! evaluation code used as much as on the metric, so Strata names the whole recipe and prints
//! it with every table:
//!
//! | protocol | tokens | metrics |
//! | --- | --- | --- |
//! | `coco` (default) | CoreNLP PTB tokens, lower case, punctuation dropped ([`crate::ptb`]) | BLEU-1..4, ROUGE-L (β = 1.2), CIDEr-D: pycocoevalcap 1.2 |
//! | `rs-lvlm` | nltk `word_tokenize` ([`crate::nltk_tokenize`]), punctuation kept | BLEU-1..4 and CIDEr-D (pycocoevalcap, lower-cased tokens), METEOR (nltk `meteor_score`), ROUGE-1/L (rouge-score, Porter stemming, max or mean over references) |
//!
//! `coco` is what caption papers and the COCO/RSICD/UCM-captions leaderboards print; `rs-lvlm`
//! is what the evaluation scripts of remote-sensing LVLM repositories (GeoChat, LHRS-Bot and
//! others) compute with nltk and rouge-score. pycocoevalcap's METEOR and SPICE are Java
//! programs and are not reproduced: `coco` has no METEOR row.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::wordnet::WordNet;
use crate::{bleu, cider, meteor, nltk_tokenize, ptb, rouge, text};

/// A named caption evaluation recipe (tokenizer and metric implementations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// pycocoevalcap 1.2: PTB tokens; BLEU, ROUGE-L, CIDEr-D.
    #[default]
    Coco,
    /// nltk `word_tokenize` tokens, nltk METEOR, rouge-score ROUGE with stemming.
    RsLvlm,
}

impl Protocol {
    /// The name the CLI takes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Coco => "coco",
            Self::RsLvlm => "rs-lvlm",
        }
    }

    /// One line saying what the protocol computes, for the table and `report.json`.
    pub fn describe(self, options: &CaptionOptions) -> String {
        match self {
            Self::Coco => "coco: pycocoevalcap 1.2 on PTB tokens (CoreNLP 3.4.1 rules, lower case, punctuation dropped): BLEU-1..4, \
                           ROUGE-L (beta 1.2), CIDEr-D; no METEOR (a Java tool there)"
                .to_owned(),
            Self::RsLvlm => format!(
                "rs-lvlm: nltk 3.9.2 word_tokenize tokens: BLEU-1..4 and CIDEr-D as pycocoevalcap, METEOR as nltk meteor_score; \
                 ROUGE-1/L as rouge-score 0.1.2 ({}, {} over references)",
                if options.rouge_stemmer { "Porter stemming" } else { "no stemming" },
                options.rouge_references.name()
            ),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coco" => Ok(Self::Coco),
            "rs-lvlm" | "nltk" => Ok(Self::RsLvlm),
            other => Err(format!("unknown protocol `{other}` (coco, rs-lvlm)")),
        }
    }
}

/// How a ROUGE score over several references is combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferenceAggregate {
    /// The reference with the best F-measure (rouge-score's `score_multi`).
    #[default]
    Max,
    /// The mean over references (scripts that loop `score` over references).
    Mean,
}

impl ReferenceAggregate {
    /// The name the CLI takes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Max => "max",
            Self::Mean => "mean",
        }
    }
}

impl FromStr for ReferenceAggregate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "max" => Ok(Self::Max),
            "mean" => Ok(Self::Mean),
            other => Err(format!("unknown reference aggregate `{other}` (max, mean)")),
        }
    }
}

/// Options of a protocol.
#[derive(Debug, Clone, Copy)]
pub struct CaptionOptions<'a> {
    /// WordNet for METEOR's synonym stage (`rs-lvlm`; exact and stem matching only when absent).
    pub wordnet: Option<&'a WordNet>,
    /// Porter-stem ROUGE tokens (rouge-score's `use_stemmer`; `rs-lvlm`).
    pub rouge_stemmer: bool,
    /// ROUGE over several references (`rs-lvlm`).
    pub rouge_references: ReferenceAggregate,
}

impl Default for CaptionOptions<'_> {
    fn default() -> Self {
        Self { wordnet: None, rouge_stemmer: true, rouge_references: ReferenceAggregate::Max }
    }
}

/// Caption metrics under one protocol: `(name, corpus value)` rows in table order, and the
/// warnings a reader of the table needs (text a reference implementation drops or cannot
/// split).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CaptionScores {
    /// `(metric name, value)`.
    pub rows: Vec<(String, f64)>,
    /// Sentences for the table and `report.json`.
    pub warnings: Vec<String>,
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// CJK ideographs and kana: scripts written without spaces between words.
fn unspaced_script(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}')
}

/// A whitespace-free run of eight or more ideographs/kana: almost surely several words that
/// every protocol's tokenizer keeps as one token.
fn has_unsegmented_text(text: &str) -> bool {
    text.split_whitespace().any(|chunk| chunk.chars().filter(|c| unspaced_script(*c)).count() >= 8)
}

fn example(texts: &[&String]) -> String {
    texts.first().map(|t| t.chars().take(40).collect::<String>()).unwrap_or_default()
}

/// Scores `candidates[i]` against `references[i]` under `protocol`.
pub fn caption_scores(
    protocol: Protocol,
    candidates: &[String],
    references: &[Vec<String>],
    options: &CaptionOptions<'_>,
) -> CaptionScores {
    let mut warnings = Vec::new();
    let all: Vec<&String> = candidates.iter().chain(references.iter().flatten()).collect();
    let unsegmented: Vec<&String> = all.iter().copied().filter(|t| has_unsegmented_text(t)).collect();
    if !unsegmented.is_empty() {
        warnings.push(format!(
            "{} captions hold Chinese or Japanese text without spaces between words (e.g. `{}`); every tokenizer here, like the \
             reference ones, keeps such a run as one token, so n-gram metrics only see exact whole-run matches: segment words \
             first (e.g. with jieba) for meaningful scores",
            unsegmented.len(),
            example(&unsegmented)
        ));
    }
    let rows = match protocol {
        Protocol::Coco => {
            let cand: Vec<Vec<String>> = candidates.iter().map(|c| ptb::tokenize(c)).collect();
            let refs: Vec<Vec<Vec<String>>> = references.iter().map(|rs| rs.iter().map(|r| ptb::tokenize(r)).collect()).collect();
            let b = bleu::bleu(&cand, &refs);
            let rouge_l: Vec<f64> = cand.iter().zip(&refs).map(|(c, r)| rouge::coco_rouge_l(r, c)).collect();
            let (cider, _) = cider::cider_d(&cand, &refs);
            vec![
                ("BLEU-1".to_owned(), b.corpus[0]),
                ("BLEU-2".to_owned(), b.corpus[1]),
                ("BLEU-3".to_owned(), b.corpus[2]),
                ("BLEU-4".to_owned(), b.corpus[3]),
                ("ROUGE-L".to_owned(), mean(&rouge_l)),
                ("CIDEr-D".to_owned(), cider),
            ]
        }
        Protocol::RsLvlm => {
            let words: Vec<Vec<String>> = candidates.iter().map(|c| nltk_tokenize::word_tokenize(c)).collect();
            let ref_words: Vec<Vec<Vec<String>>> =
                references.iter().map(|rs| rs.iter().map(|r| nltk_tokenize::word_tokenize(r)).collect()).collect();
            let lower = |tokens: &Vec<String>| tokens.iter().map(|t| t.to_lowercase()).collect::<Vec<_>>();
            let cand: Vec<Vec<String>> = words.iter().map(lower).collect();
            let refs: Vec<Vec<Vec<String>>> = ref_words.iter().map(|rs| rs.iter().map(lower).collect()).collect();
            let b = bleu::bleu(&cand, &refs);
            let (cider, _) = cider::cider_d(&cand, &refs);
            let meteor: Vec<f64> = words.iter().zip(&ref_words).map(|(c, r)| meteor::meteor(r, c, options.wordnet)).collect();
            let rouge_cand: Vec<Vec<String>> = candidates.iter().map(|c| rouge::tokens(c, options.rouge_stemmer)).collect();
            let rouge_refs: Vec<Vec<Vec<String>>> =
                references.iter().map(|rs| rs.iter().map(|r| rouge::tokens(r, options.rouge_stemmer)).collect()).collect();
            let combine = |metric: fn(&[String], &[String]) -> rouge::Prf| -> Vec<f64> {
                rouge_cand
                    .iter()
                    .zip(&rouge_refs)
                    .map(|(c, r)| match options.rouge_references {
                        ReferenceAggregate::Max => rouge::best_of(r, c, metric).fmeasure,
                        ReferenceAggregate::Mean => rouge::mean_of(r, c, metric).fmeasure,
                    })
                    .collect()
            };
            let dropped: Vec<&String> = all.iter().copied().filter(|t| text::dropped_by_rouge_score(t)).collect();
            if !dropped.is_empty() {
                warnings.push(format!(
                    "rouge-score's tokenizer keeps only a-z and 0-9: {} of {} captions and references lose letters outside ASCII \
                     (e.g. `{}`), and ROUGE-1/ROUGE-L score them as rouge-score does (0 for text with no ASCII word); BLEU, \
                     METEOR and CIDEr-D use nltk tokens, which keep every script",
                    dropped.len(),
                    all.len(),
                    example(&dropped)
                ));
            }
            vec![
                ("BLEU-1".to_owned(), b.corpus[0]),
                ("BLEU-2".to_owned(), b.corpus[1]),
                ("BLEU-3".to_owned(), b.corpus[2]),
                ("BLEU-4".to_owned(), b.corpus[3]),
                ((if options.wordnet.is_some() { "METEOR" } else { "METEOR (no WordNet)" }).to_owned(), mean(&meteor)),
                ("ROUGE-1".to_owned(), mean(&combine(rouge::rouge1))),
                ("ROUGE-L".to_owned(), mean(&combine(rouge::rouge_l))),
                ("CIDEr-D".to_owned(), cider),
            ]
        }
    };
    CaptionScores { rows, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_and_print_their_names() {
        assert_eq!("coco".parse::<Protocol>(), Ok(Protocol::Coco));
        assert_eq!("rs-lvlm".parse::<Protocol>(), Ok(Protocol::RsLvlm));
        assert!("ptb".parse::<Protocol>().is_err());
        assert_eq!(Protocol::default().to_string(), "coco");
        assert_eq!("mean".parse::<ReferenceAggregate>(), Ok(ReferenceAggregate::Mean));
    }

    #[test]
    fn identical_non_latin_captions_are_perfect_under_coco_and_flagged_under_rs_lvlm() {
        let texts = ["много белых самолётов стоят у терминала аэропорта", "ένα ποτάμι διασχίζει ένα πυκνό πράσινο δάσος"];
        let candidates: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        let references: Vec<Vec<String>> = texts.iter().map(|t| vec![(*t).to_owned()]).collect();
        let coco = caption_scores(Protocol::Coco, &candidates, &references, &CaptionOptions::default());
        for (name, value) in &coco.rows[..5] {
            assert!((value - 1.0).abs() < 1e-6, "{name} = {value}");
        }
        assert!(coco.warnings.is_empty(), "{:?}", coco.warnings);
        let nltk = caption_scores(Protocol::RsLvlm, &candidates, &references, &CaptionOptions::default());
        let value = |name: &str| nltk.rows.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert!((value("BLEU-4").unwrap() - 1.0).abs() < 1e-6);
        assert_eq!(value("ROUGE-L"), Some(0.0));
        assert!(nltk.warnings.iter().any(|w| w.contains("a-z and 0-9")), "{:?}", nltk.warnings);
    }
}

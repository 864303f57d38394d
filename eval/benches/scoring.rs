//! Times each caption metric on an answer file pair (see `benches/scoring/compare.sh`), the
//! same work as `benches/scoring/python_scoring.py`: BLEU-1..4, CIDEr-D, ROUGE-1 and ROUGE-L,
//! METEOR with WordNet, and BERTScore on the first `BERT_N` pairs. Prints one JSON line.
//!
//!     scoring DIR THREADS BERT_N

use std::path::PathBuf;
use std::time::Instant;

use eval::answers::{answer_text, read_predictions, read_references};
use eval::bertscore::BertScorer;
use eval::wordnet::WordNet;
use eval::{bleu, cider, meteor, rouge, text};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.len() != 3 {
        return Err("usage: scoring DIR THREADS BERT_N".into());
    }
    let dir = PathBuf::from(&args[0]);
    let threads: i32 = args[1].parse()?;
    let bert_n: usize = args[2].parse()?;
    model::tch::set_num_threads(threads);
    let predictions = read_predictions(&dir.join("predictions.jsonl"))?;
    let references = read_references(&dir.join("references.jsonl"))?;
    let candidates: Vec<String> = predictions.iter().map(|p| answer_text(&p.answer)).collect();
    let refs: Vec<Vec<String>> = references.iter().map(|r| r.references.iter().map(answer_text).collect()).collect();
    let mut seconds = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    let mut time = |name: &str, start: Instant| {
        seconds.insert(name.to_owned(), start.elapsed().as_secs_f64().into());
    };

    let start = Instant::now();
    let cand_tokens: Vec<Vec<String>> = candidates.iter().map(|c| text::tokenize(c)).collect();
    let ref_tokens: Vec<Vec<Vec<String>>> = refs.iter().map(|rs| rs.iter().map(|r| text::tokenize(r)).collect()).collect();
    time("tokenize", start);

    let start = Instant::now();
    let b = bleu::bleu(&cand_tokens, &ref_tokens);
    time("bleu", start);
    scores.insert("BLEU-4".into(), b.corpus[3].into());

    let start = Instant::now();
    let (c, _) = cider::cider_d(&cand_tokens, &ref_tokens);
    time("cider", start);
    scores.insert("CIDEr-D".into(), c.into());

    let start = Instant::now();
    let mut rouge_l = 0.0;
    for (c, rs) in candidates.iter().zip(&refs) {
        let c = rouge::tokens(c, false);
        let rs: Vec<Vec<String>> = rs.iter().map(|r| rouge::tokens(r, false)).collect();
        let _ = rouge::best_of(&rs, &c, rouge::rouge1);
        rouge_l += rouge::best_of(&rs, &c, rouge::rouge_l).fmeasure;
    }
    time("rouge", start);
    scores.insert("ROUGE-L".into(), (rouge_l / candidates.len() as f64).into());

    let wordnet = WordNet::load(&WordNet::default_dir())?;
    let start = Instant::now();
    let total: f64 = cand_tokens.iter().zip(&ref_tokens).map(|(c, rs)| meteor::meteor(rs, c, Some(&wordnet))).sum();
    time("meteor", start);
    scores.insert("METEOR".into(), (total / candidates.len() as f64).into());

    let scorer = BertScorer::load(&BertScorer::default_dir(), None, model::tch::Device::Cpu)?;
    let n = bert_n.min(candidates.len());
    let start = Instant::now();
    let bert = scorer.score(&candidates[..n], &refs[..n], None)?;
    time("bertscore", start);
    scores.insert("BERTScore F1".into(), (bert.iter().map(|s| s.fmeasure).sum::<f64>() / n.max(1) as f64).into());

    let total: f64 = seconds.iter().filter(|(k, _)| *k != "bertscore").filter_map(|(_, v)| v.as_f64()).sum();
    seconds.insert("total_without_bertscore".into(), total.into());
    println!(
        "{}",
        serde_json::json!({"impl": "strata eval", "pairs": candidates.len(), "bertscore_pairs": n, "seconds": seconds, "scores": scores})
    );
    Ok(())
}

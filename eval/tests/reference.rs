//! Every caption metric agrees with its reference implementation on committed fixtures
//! (`eval/tests/fixtures/metrics.json`, made by `scripts/fixtures/make_metric_golden.py`):
//! BLEU, ROUGE and CIDEr within 1e-4, METEOR within 1e-3, BERTScore within 1e-3.

use eval::bertscore::BertScorer;
use eval::wordnet::WordNet;
use eval::{bleu, cider, meteor, porter, rouge, text};
use serde_json::Value;

struct Fixture {
    candidates: Vec<String>,
    references: Vec<Vec<String>>,
    expected: Value,
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let items = value["items"].as_array().expect("items");
    Fixture {
        candidates: items.iter().map(|i| i["candidate"].as_str().expect("candidate").to_owned()).collect(),
        references: items
            .iter()
            .map(|i| i["references"].as_array().expect("refs").iter().map(|r| r.as_str().expect("ref").to_owned()).collect())
            .collect(),
        expected: value["expected"].clone(),
    }
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().expect("array").iter().map(|v| v.as_f64().expect("number")).collect()
}

fn assert_close(name: &str, actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{name}: lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tolerance, "{name}[{i}]: {a} vs reference {e}");
    }
}

fn tokenised(f: &Fixture) -> (Vec<Vec<String>>, Vec<Vec<Vec<String>>>) {
    let candidates = f.candidates.iter().map(|c| text::tokenize(c)).collect();
    let references = f.references.iter().map(|refs| refs.iter().map(|r| text::tokenize(r)).collect()).collect();
    (candidates, references)
}

#[test]
fn bleu_matches_pycocoevalcap() {
    let f = fixture();
    let (candidates, references) = tokenised(&f);
    let scores = bleu::bleu(&candidates, &references);
    assert_close("corpus BLEU", &scores.corpus, &floats(&f.expected["bleu"]), 1e-4);
    let expected: Vec<Vec<f64>> = f.expected["bleu_per_caption"].as_array().unwrap().iter().map(floats).collect();
    for (i, (actual, expected)) in scores.per_caption.iter().zip(&expected).enumerate() {
        assert_close(&format!("BLEU of caption {i}"), actual, expected, 1e-4);
    }
}

#[test]
fn cider_matches_pycocoevalcap() {
    let f = fixture();
    let (candidates, references) = tokenised(&f);
    let (corpus, each) = cider::cider_d(&candidates, &references);
    assert_close("CIDEr-D", &[corpus], &[f.expected["cider"].as_f64().unwrap()], 1e-4);
    assert_close("CIDEr-D per caption", &each, &floats(&f.expected["cider_per_caption"]), 1e-4);
}

#[test]
fn rouge_matches_rouge_score_with_and_without_stemming() {
    let f = fixture();
    for (stem, suffix) in [(false, ""), (true, "_stemmed")] {
        let candidates: Vec<Vec<String>> = f.candidates.iter().map(|c| rouge::tokens(c, stem)).collect();
        let references: Vec<Vec<Vec<String>>> =
            f.references.iter().map(|refs| refs.iter().map(|r| rouge::tokens(r, stem)).collect()).collect();
        let r1: Vec<f64> = candidates.iter().zip(&references).map(|(c, r)| rouge::best_of(r, c, rouge::rouge1).fmeasure).collect();
        let rl: Vec<f64> = candidates.iter().zip(&references).map(|(c, r)| rouge::best_of(r, c, rouge::rouge_l).fmeasure).collect();
        assert_close(&format!("ROUGE-1{suffix}"), &r1, &floats(&f.expected[format!("rouge1{suffix}")]), 1e-4);
        assert_close(&format!("ROUGE-L{suffix}"), &rl, &floats(&f.expected[format!("rougeL{suffix}")]), 1e-4);
    }
}

#[test]
fn porter_stemmer_matches_nltk_on_twelve_thousand_words() {
    let f = fixture();
    let expected = f.expected["porter"].as_object().expect("porter");
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(word, stem)| {
            let ours = porter::stem(word);
            (ours != stem.as_str().unwrap_or_default()).then(|| format!("{word}: {ours} vs {stem}"))
        })
        .collect();
    assert!(expected.len() > 10_000);
    assert!(wrong.is_empty(), "{} words differ, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(10)]);
}

#[test]
fn meteor_matches_nltk_with_wordnet() {
    let f = fixture();
    let wordnet = WordNet::load(&WordNet::default_dir()).expect("WordNet 3.0 (run scripts/setup.sh)");
    let (candidates, references) = tokenised(&f);
    let scores: Vec<f64> = candidates.iter().zip(&references).map(|(c, r)| meteor::meteor(r, c, Some(&wordnet))).collect();
    assert_close("METEOR", &scores, &floats(&f.expected["meteor"]), 1e-3);
    // The synonym stage matters on this data: without WordNet some captions score lower.
    let without: Vec<f64> = candidates.iter().zip(&references).map(|(c, r)| meteor::meteor(r, c, None)).collect();
    assert!(without.iter().zip(&scores).any(|(a, b)| b - a > 1e-3));
}

#[test]
fn bertscore_matches_bert_score_with_the_same_encoder() {
    let f = fixture();
    let scorer =
        BertScorer::load(&BertScorer::default_dir(), None, model::tch::Device::Cpu).expect("all-MiniLM-L6-v2 (run scripts/setup.sh)");
    let plain = scorer.score(&f.candidates, &f.references, None).unwrap();
    for (key, pick) in [("precision", 0), ("recall", 1), ("f1", 2)] {
        let ours: Vec<f64> = plain.iter().map(|s| [s.precision, s.recall, s.fmeasure][pick]).collect();
        assert_close(&format!("BERTScore {key}"), &ours, &floats(&f.expected["bertscore"][key]), 1e-3);
    }
    let all_refs: Vec<String> = f.references.iter().flatten().cloned().collect();
    let idf = scorer.idf(&all_refs).unwrap();
    let weighted = scorer.score(&f.candidates, &f.references, Some(&idf)).unwrap();
    let ours: Vec<f64> = weighted.iter().map(|s| s.fmeasure).collect();
    assert_close("BERTScore F1 with IDF", &ours, &floats(&f.expected["bertscore_idf"]["f1"]), 1e-3);
}

//! Both caption protocols agree with their reference implementations on committed fixtures
//! full of hyphens, punctuation, numbers and non-ASCII text (`eval/tests/fixtures/protocols.json`,
//! made by `scripts/fixtures/make_protocol_golden.py`): `coco` token for token with
//! pycocoevalcap's PTBTokenizer (Stanford CoreNLP in Java) and score for score with its BLEU,
//! ROUGE-L and CIDEr-D; `rs-lvlm` token for token with nltk's word_tokenize, and with nltk
//! METEOR and rouge-score (stemmed; best and mean reference).

use std::collections::BTreeMap;

use eval::protocol::{caption_scores, CaptionOptions, Protocol, ReferenceAggregate};
use eval::wordnet::WordNet;
use eval::{nltk_tokenize, ptb};
use serde_json::Value;

struct Fixture {
    candidates: Vec<String>,
    references: Vec<Vec<String>>,
    ptb_tokens: BTreeMap<String, Vec<String>>,
    nltk_tokens: BTreeMap<String, Vec<String>>,
    expected: Value,
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().expect("array").iter().map(|v| v.as_str().expect("string").to_owned()).collect()
}

fn fixture() -> Fixture {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/protocols.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let items = value["items"].as_array().expect("items");
    let tokens =
        |key: &str| value[key].as_object().expect("tokens").iter().map(|(text, t)| (text.clone(), strings(t))).collect::<BTreeMap<_, _>>();
    Fixture {
        candidates: items.iter().map(|i| i["candidate"].as_str().expect("candidate").to_owned()).collect(),
        references: items.iter().map(|i| strings(&i["references"])).collect(),
        ptb_tokens: tokens("ptb_tokens"),
        nltk_tokens: tokens("nltk_tokens"),
        expected: value["expected"].clone(),
    }
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap_or_else(|| panic!("not an array: {value}")).iter().map(|v| v.as_f64().expect("number")).collect()
}

fn assert_close(name: &str, actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{name}: lengths");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tolerance, "{name}[{i}]: {a} vs reference {e}");
    }
}

fn row(scores: &eval::protocol::CaptionScores, name: &str) -> f64 {
    scores.rows.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no `{name}` in {:?}", scores.rows)).1
}

#[test]
fn ptb_tokens_match_pycocoevalcap_ptbtokenizer_token_for_token() {
    let f = fixture();
    assert!(f.ptb_tokens.len() > 150);
    let wrong: Vec<String> = f
        .ptb_tokens
        .iter()
        .filter_map(|(text, want)| {
            let got = ptb::tokenize(text);
            (&got != want).then(|| format!("{text:?}: {got:?} vs {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), f.ptb_tokens.len(), wrong.join("\n"));
    // The fixture covers what the protocol is about: hyphenated words kept whole, punctuation
    // dropped, numbers and other scripts kept.
    let all: Vec<&String> = f.ptb_tokens.values().flatten().collect();
    for token in ["well-maintained", "state-of-the-art", "1,000", "3.5", "10:30", "u.s.", "самолётов", "δάσος", "fließt"] {
        assert!(all.iter().any(|t| t.as_str() == token), "`{token}` not in the fixture's PTB tokens");
    }
    assert!(!all.iter().any(|t| [",", ".", ";", "``"].contains(&t.as_str())));
}

#[test]
fn word_tokens_match_nltk_word_tokenize_token_for_token() {
    let f = fixture();
    let wrong: Vec<String> = f
        .nltk_tokens
        .iter()
        .filter_map(|(text, want)| {
            let got = nltk_tokenize::word_tokenize(text);
            (&got != want).then(|| format!("{text:?}: {got:?} vs {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), f.nltk_tokens.len(), wrong.join("\n"));
    let all: Vec<&String> = f.nltk_tokens.values().flatten().collect();
    for token in ["well-maintained", ",", "``", "n't", "'s", "--", "...", "Zürich"] {
        assert!(all.iter().any(|t| t.as_str() == token), "`{token}` not in the fixture's nltk tokens");
    }
}

#[test]
fn coco_protocol_matches_pycocoevalcap() {
    let f = fixture();
    let e = &f.expected["coco"];
    let scores = caption_scores(Protocol::Coco, &f.candidates, &f.references, &CaptionOptions::default());
    let bleu: Vec<f64> = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"].iter().map(|n| row(&scores, n)).collect();
    assert_close("coco BLEU", &bleu, &floats(&e["bleu"]), 1e-4);
    assert_close("coco ROUGE-L", &[row(&scores, "ROUGE-L")], &[e["rouge_l"].as_f64().unwrap()], 1e-4);
    assert_close("coco CIDEr-D", &[row(&scores, "CIDEr-D")], &[e["cider"].as_f64().unwrap()], 1e-4);
    assert!(scores.rows.iter().all(|(n, _)| !n.starts_with("METEOR")), "coco has no METEOR");
    // Per caption, through the same tokens.
    let cand: Vec<Vec<String>> = f.candidates.iter().map(|c| ptb::tokenize(c)).collect();
    let refs: Vec<Vec<Vec<String>>> = f.references.iter().map(|rs| rs.iter().map(|r| ptb::tokenize(r)).collect()).collect();
    let rouge: Vec<f64> = cand.iter().zip(&refs).map(|(c, r)| eval::rouge::coco_rouge_l(r, c)).collect();
    assert_close("coco ROUGE-L per caption", &rouge, &floats(&e["rouge_l_per_caption"]), 1e-6);
    let (_, cider) = eval::cider::cider_d(&cand, &refs);
    assert_close("coco CIDEr-D per caption", &cider, &floats(&e["cider_per_caption"]), 1e-4);
}

#[test]
fn rs_lvlm_protocol_matches_nltk_and_rouge_score() {
    let f = fixture();
    let e = &f.expected["rs_lvlm"];
    let wordnet = WordNet::load(&WordNet::default_dir()).expect("WordNet 3.0 (run scripts/setup.sh)");
    for (aggregate, stem, suffix) in [
        (ReferenceAggregate::Max, true, "max"),
        (ReferenceAggregate::Mean, true, "mean"),
        (ReferenceAggregate::Max, false, "max_no_stemmer"),
        (ReferenceAggregate::Mean, false, "mean_no_stemmer"),
    ] {
        let options = CaptionOptions { wordnet: Some(&wordnet), rouge_stemmer: stem, rouge_references: aggregate };
        let scores = caption_scores(Protocol::RsLvlm, &f.candidates, &f.references, &options);
        let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
        assert_close(&format!("ROUGE-1 {suffix}"), &[row(&scores, "ROUGE-1")], &[mean(floats(&e[format!("rouge1_{suffix}")]))], 1e-6);
        assert_close(&format!("ROUGE-L {suffix}"), &[row(&scores, "ROUGE-L")], &[mean(floats(&e[format!("rougeL_{suffix}")]))], 1e-6);
        let bleu: Vec<f64> = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"].iter().map(|n| row(&scores, n)).collect();
        assert_close("rs-lvlm BLEU", &bleu, &floats(&e["bleu"]), 1e-4);
        assert_close("rs-lvlm CIDEr-D", &[row(&scores, "CIDEr-D")], &[e["cider"].as_f64().unwrap()], 1e-4);
        assert_close("rs-lvlm METEOR", &[row(&scores, "METEOR")], &[mean(floats(&e["meteor"]))], 1e-3);
    }
    // Mean and max over references differ on this data, so the option is tested, not inert.
    let (max, avg) = (floats(&e["rougeL_max"]), floats(&e["rougeL_mean"]));
    assert!(max.iter().zip(&avg).any(|(a, b)| a - b > 1e-3));
    // Per caption METEOR on nltk's tokens.
    let words: Vec<Vec<String>> = f.candidates.iter().map(|c| nltk_tokenize::word_tokenize(c)).collect();
    let refs: Vec<Vec<Vec<String>>> = f.references.iter().map(|rs| rs.iter().map(|r| nltk_tokenize::word_tokenize(r)).collect()).collect();
    let meteor: Vec<f64> = words.iter().zip(&refs).map(|(c, r)| eval::meteor::meteor(r, c, Some(&wordnet))).collect();
    assert_close("METEOR per caption", &meteor, &floats(&e["meteor"]), 1e-3);
}

#[test]
fn the_protocols_differ_where_the_issue_says_they_do() {
    // CIDEr-D on PTB tokens is not CIDEr-D on nltk tokens: the protocol is part of the number.
    let f = fixture();
    let (coco, rs) = (f.expected["coco"]["cider"].as_f64().unwrap(), f.expected["rs_lvlm"]["cider"].as_f64().unwrap());
    assert!((coco - rs).abs() > 1e-2, "{coco} vs {rs}");
}

#[test]
fn rs_lvlm_warns_about_text_rouge_score_drops_and_coco_does_not() {
    let f = fixture();
    let rs = caption_scores(Protocol::RsLvlm, &f.candidates, &f.references, &CaptionOptions::default());
    assert!(rs.warnings.iter().any(|w| w.contains("rouge-score") && w.contains("a-z and 0-9")), "{:?}", rs.warnings);
    let coco = caption_scores(Protocol::Coco, &f.candidates, &f.references, &CaptionOptions::default());
    assert!(coco.warnings.is_empty(), "{:?}", coco.warnings);
    // Unsegmented Chinese is flagged under both.
    let candidates = vec!["许多白色飞机停在机场航站楼旁边".to_owned()];
    let references = vec![vec!["许多白色飞机停在机场航站楼旁边".to_owned()]];
    for protocol in [Protocol::Coco, Protocol::RsLvlm] {
        let scores = caption_scores(protocol, &candidates, &references, &CaptionOptions::default());
        assert!(scores.warnings.iter().any(|w| w.contains("without spaces")), "{protocol}: {:?}", scores.warnings);
    }
}

//! Scoring answer files: joining by id, missing and extra answers, each task's table; detection
//! AP@0.5 against the reference implementation's numbers, and DIOR's detection layout.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::io::Write as _;

use eval::answers::{read_predictions, read_references};
use eval::detection::{evaluate, Detection};
use eval::protocol::Protocol;
use eval::readers::read;
use eval::score::{score, CaptionScorers, Report, Task};
use serde_json::{json, Value};

fn file(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    f
}

fn value(report: &Report, name: &str) -> f64 {
    report.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no `{name}` in {:?}", report.metrics)).value
}

#[test]
fn captions_score_perfectly_against_themselves_and_missing_answers_count_as_empty() {
    let refs = file(&[
        r#"{"id": "a", "references": ["many planes are parked near the terminal", "planes at an airport"]}"#,
        r#"{"id": "b", "references": ["a river runs through a dense forest"]}"#,
        r#"{"id": "c", "references": ["a beach with white waves"]}"#,
    ]);
    let preds = file(&[
        r#"{"id": "a", "answer": "many planes are parked near the terminal"}"#,
        r#"{"id": "b", "answer": "a river runs through a dense forest"}"#,
        r#"{"id": "zzz", "answer": "not in the references"}"#,
    ]);
    let rs_lvlm = CaptionScorers { protocol: Protocol::RsLvlm, ..CaptionScorers::default() };
    let report = score(Task::Caption, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), rs_lvlm).unwrap();
    assert_eq!(report.missing, 1);
    assert_eq!(report.extra, vec!["zzz".to_owned()]);
    // Two perfect captions and one empty one.
    assert!((value(&report, "ROUGE-1") - 2.0 / 3.0).abs() < 1e-9);
    assert!((value(&report, "METEOR (no WordNet)") - 2.0 / 3.0 * 0.9998).abs() < 1e-3);
    assert!(value(&report, "BLEU-1") > 0.5 && value(&report, "BLEU-1") < 1.0, "brevity penalty for the empty caption");
    assert!(report.to_table().contains("1 references had no prediction"));
}

#[test]
fn classification_vqa_and_grounding_tables() {
    let refs = file(&[
        r#"{"id": "1", "references": ["airport"], "classes": ["airport", "bare land", "beach"]}"#,
        r#"{"id": "2", "references": ["beach"], "classes": ["airport", "bare land", "beach"]}"#,
    ]);
    let preds = file(&[r#"{"id": "1", "answer": "Airport."}"#, r#"{"id": "2", "answer": "I cannot tell"}"#]);
    let report =
        score(Task::Classify, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), CaptionScorers::default())
            .unwrap();
    assert_eq!(value(&report, "accuracy"), 0.5);
    assert_eq!(value(&report, "parse failures"), 1.0);
    // A count reads as one in the table, not as a fraction among the rates.
    let table = report.to_table();
    let line = table.lines().find(|l| l.starts_with("parse failures")).unwrap();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["parse", "failures", "1", "2"], "{table}");
    assert!(table.lines().any(|l| l.starts_with("accuracy ") && l.contains("0.5000")), "{table}");

    let refs = file(&[
        r#"{"id": "q1", "references": ["yes"], "type": "presence"}"#,
        r#"{"id": "q2", "references": ["between 11 and 100"], "type": "count"}"#,
        r#"{"id": "q3", "references": ["no"], "type": "presence"}"#,
    ]);
    let preds =
        file(&[r#"{"id": "q1", "answer": "Yes"}"#, r#"{"id": "q2", "answer": "between 11 and 100"}"#, r#"{"id": "q3", "answer": "yes"}"#]);
    let report =
        score(Task::Vqa, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), CaptionScorers::default())
            .unwrap();
    assert_eq!(value(&report, "accuracy[presence]"), 0.5);
    assert_eq!(value(&report, "average accuracy"), 0.75);
    assert!((value(&report, "overall accuracy") - 2.0 / 3.0).abs() < 1e-12);

    let refs = file(&[
        r#"{"id": "g1", "references": [[10, 10, 50, 50]]}"#,
        r#"{"id": "g2", "references": [[0, 0, 200, 200]], "image_size": [400, 400]}"#,
        r#"{"id": "g3", "references": [[0, 0, 20, 20]]}"#,
    ]);
    let preds = file(&[
        r#"{"id": "g1", "answer": [12, 10, 50, 52]}"#,
        r#"{"id": "g2", "answer": "the tank <box>[0, 0, 500, 500]</box>"}"#,
        r#"{"id": "g3", "answer": "somewhere"}"#,
    ]);
    let report =
        score(Task::Ground, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), CaptionScorers::default())
            .unwrap();
    assert!((value(&report, "Acc@0.5") - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(value(&report, "Acc@0.5[small]"), 0.0);
    assert_eq!(value(&report, "Acc@0.5[large]"), 1.0);
    assert_eq!(value(&report, "parse failures"), 1.0);
}

/// Field case 11's kind: in every box format Strata accepts, a box with its corners swapped (or
/// without area) is a parse failure, never a box scored IoU 0 in silence; the well-formed box
/// in each format scores 1.
#[test]
fn every_box_format_scores_right_or_reports_a_parse_failure() {
    // One reference box [80, 160, 400, 480] on an 800 × 800 image; the grid box is the same box.
    let formats = [
        ("pixel array", r#"[80, 160, 400, 480]"#, r#"[400, 480, 80, 160]"#, r#"[80, 160, 80, 480]"#),
        ("pixel array as text", r#""[80, 160, 400, 480]""#, r#""[400, 480, 80, 160]""#, r#""[80, 160, 400, 160]""#),
        (
            "<box> tag",
            r#""<box>[100, 200, 500, 600]</box>""#,
            r#""<box>[500, 600, 100, 200]</box>""#,
            r#""<box>[100, 600, 500, 600]</box>""#,
        ),
    ];
    for (name, right, swapped, flat) in formats {
        let refs = [r#"{"id": "a", "references": [[80, 160, 400, 480]], "image_size": [800, 800]}"#.to_owned()];
        let scored_one = |answer: &str| {
            let preds = [format!(r#"{{"id": "a", "answer": {answer}}}"#)];
            let report = scored(Task::Ground, &preds, &refs, CaptionScorers::default());
            (value(&report, "mean IoU"), value(&report, "parse failures"))
        };
        let (iou, failures) = scored_one(right);
        assert!((iou - 1.0).abs() < 1e-9 && failures == 0.0, "{name}: the right box scored IoU {iou}, {failures} failures");
        for bad in [swapped, flat] {
            let (iou, failures) = scored_one(bad);
            assert_eq!((iou, failures), (0.0, 1.0), "{name}: {bad} must be a parse failure");
        }
    }
    // A reference without area is the reference file's error, named.
    let err = score(
        Task::Ground,
        &read_predictions(file(&[r#"{"id": "g", "answer": [1, 2, 3, 4]}"#]).path()).unwrap(),
        &read_references(file(&[r#"{"id": "g", "references": [[5, 5, 1, 9]]}"#]).path()).unwrap(),
        CaptionScorers::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("x1 < x2"), "{err}");
}

#[test]
fn malformed_files_name_the_line() {
    let bad = file(&[r#"{"id": "1", "answer": "x"}"#, r#"{"id": "2", "answr": "typo"}"#]);
    let err = read_predictions(bad.path()).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("answr"), "{err}");
    let twice = file(&[r#"{"id": "1", "references": ["a"]}"#, r#"{"id": "1", "references": ["b"]}"#]);
    let err = read_references(twice.path()).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("appears twice"), "{err}");
    let refs = file(&[r#"{"id": "g", "references": ["not a box"]}"#]);
    let preds = file(&[r#"{"id": "g", "answer": [1, 2, 3, 4]}"#]);
    let err =
        score(Task::Ground, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), CaptionScorers::default())
            .unwrap_err()
            .to_string();
    assert!(err.contains("needs a box"), "{err}");
}

fn scored(task: Task, preds: &[String], refs: &[String], scorers: CaptionScorers<'_>) -> Report {
    let preds = file(&preds.iter().map(String::as_str).collect::<Vec<_>>());
    let refs = file(&refs.iter().map(String::as_str).collect::<Vec<_>>());
    score(task, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), scorers).unwrap()
}

fn line(id: &str, key: &str, value: serde_json::Value) -> String {
    serde_json::json!({"id": id, key: value}).to_string()
}

#[test]
fn vqa_counts_number_words_up_to_twenty_and_numbers_with_commas_as_digits() {
    // The handed case (08): words against digits, "Ten." and "1,000".
    let words = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    let mut preds = Vec::new();
    let mut refs = Vec::new();
    for (n, word) in words.iter().enumerate() {
        // Phrasings LLMs give: a bare word, capitalised with a period, with an article.
        for (k, answer) in [word.to_string(), format!("{}.", capitalise(word)), format!("The {word}")].into_iter().enumerate() {
            let id = format!("{word}-{k}");
            preds.push(line(&id, "answer", answer.into()));
            refs.push(serde_json::json!({"id": id, "references": [n.to_string()], "type": "count"}).to_string());
        }
    }
    for (id, answer, reference, kind) in [
        ("none", "none", "0", "count"),
        ("thousand", "1000", "1,000", "count"),
        ("thousands", "1,000,000", "1000000", "count"),
        ("yes", "Yes.", "yes", "presence"),
        ("no", "No!", "no", "presence"),
    ] {
        preds.push(line(id, "answer", answer.into()));
        refs.push(serde_json::json!({"id": id, "references": [reference], "type": kind}).to_string());
    }
    let report = scored(Task::Vqa, &preds, &refs, CaptionScorers::default());
    assert_eq!(value(&report, "overall accuracy"), 1.0, "{}", report.to_table());
    assert_eq!(value(&report, "accuracy[count]"), 1.0);
    assert!(report.protocol.contains("VQA answer normalisation"), "{}", report.protocol);
    assert!(report.to_table().starts_with("protocol: vqa"));

    // Wrong numbers stay wrong: normalisation must not make everything equal.
    let preds = [line("a", "answer", "twenty-one".into()), line("b", "answer", "three".into()), line("c", "answer", "1,001".into())];
    let refs = [
        serde_json::json!({"id": "a", "references": ["20"]}).to_string(),
        serde_json::json!({"id": "b", "references": ["2"]}).to_string(),
        serde_json::json!({"id": "c", "references": ["1000"]}).to_string(),
    ];
    let report = scored(Task::Vqa, &preds, &refs, CaptionScorers::default());
    assert_eq!(value(&report, "overall accuracy"), 0.0);
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

const AID: [&str; 30] = [
    "airport",
    "bare land",
    "baseball field",
    "beach",
    "bridge",
    "center",
    "church",
    "commercial",
    "dense residential",
    "desert",
    "farmland",
    "forest",
    "industrial",
    "meadow",
    "medium residential",
    "mountain",
    "park",
    "parking",
    "playground",
    "pond",
    "port",
    "railway station",
    "resort",
    "river",
    "school",
    "sparse residential",
    "square",
    "stadium",
    "storage tanks",
    "viaduct",
];

fn classify(cases: &[(&str, &str)], classes: &[&str]) -> Report {
    let preds: Vec<String> = cases.iter().enumerate().map(|(i, (answer, _))| line(&i.to_string(), "answer", (*answer).into())).collect();
    let refs: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, class))| serde_json::json!({"id": i.to_string(), "references": [class], "classes": classes}).to_string())
        .collect();
    scored(Task::Classify, &preds, &refs, CaptionScorers::default())
}

#[test]
fn classes_named_inside_other_class_names_are_matched_by_the_longest_whole_word_name() {
    // The handed case (15), with AID's 30 classes.
    let report = classify(
        &[
            ("An airport with several planes.", "airport"),
            ("parking lot", "parking"),
            ("a sports stadium", "stadium"),
            ("port", "port"),
            ("It is a park.", "park"),
            ("dense residential area", "dense residential"),
        ],
        &AID,
    );
    assert_eq!(value(&report, "accuracy"), 1.0, "{}", report.to_table());
    assert_eq!(value(&report, "parse failures"), 0.0);
    // Neighbours: other phrasings of the same classes.
    let report = classify(
        &[
            ("Airports.", "airport"),
            ("A seaport with cranes: port", "port"),
            ("It looks like a parking area with many parked cars.", "parking"),
            ("a railway station beside a square", "railway station"),
            ("Storage-tanks", "storage tanks"),
            ("This is a sparse residential area near a river.", "sparse residential"),
            ("baseball", "baseball field"),
        ],
        &AID,
    );
    assert_eq!(value(&report, "accuracy"), 1.0, "{}", report.to_table());
    // An answer naming two equally specific classes is a parse failure, not a guess.
    let report = classify(&[("a beach or a river", "beach"), ("residential", "dense residential")], &AID);
    assert_eq!(value(&report, "parse failures"), 2.0);
}

#[test]
fn other_class_lists_and_scripts_match_whole_words() {
    // NWPU-RESISC45-style names nested in each other.
    let nwpu = ["basketball court", "tennis court", "ground track field", "railway", "railway station", "harbor", "ship", "lake"];
    let report = classify(
        &[
            ("A basketball court.", "basketball court"),
            ("tennis courts", "tennis court"),
            ("the railway station", "railway station"),
            ("a railway through fields", "railway"),
            ("Harbors with boats", "harbor"),
        ],
        &nwpu,
    );
    assert_eq!(value(&report, "accuracy"), 1.0, "{}", report.to_table());
    // Russian and Chinese class lists.
    let report = classify(&[("Это аэропорт.", "аэропорт"), ("морской порт", "порт"), ("лес", "лес")], &["аэропорт", "порт", "лес"]);
    assert_eq!(value(&report, "accuracy"), 1.0, "{}", report.to_table());
    let report = classify(&[("这是一个机场。", "机场"), ("港口", "港口")], &["机场", "港口", "森林"]);
    assert_eq!(value(&report, "accuracy"), 1.0, "{}", report.to_table());
}

#[test]
fn non_latin_captions_score_under_coco_and_warn_under_rs_lvlm() {
    // The handed case (10): identical Russian, Chinese and Greek captions.
    let captions = [
        ("ru1", "много белых самолётов стоят у терминала аэропорта"),
        ("zh1", "许多 白色 飞机 停 在 机场 航站楼 旁边"),
        ("el1", "ένα ποτάμι διασχίζει ένα πυκνό πράσινο δάσος"),
        // Neighbours: Arabic, Hindi and accented Latin.
        ("ar1", "طائرات كثيرة متوقفة بجانب مبنى المطار"),
        ("hi1", "हवाई अड्डे के पास कई सफेद विमान खड़े हैं"),
        ("fr1", "un fleuve traverse une forêt dense près du château"),
    ];
    let preds: Vec<String> = captions.iter().map(|(id, text)| line(id, "answer", (*text).into())).collect();
    let refs: Vec<String> = captions.iter().map(|(id, text)| line(id, "references", serde_json::json!([text]))).collect();
    let coco = scored(Task::Caption, &preds, &refs, CaptionScorers::default());
    for name in ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"] {
        assert!((value(&coco, name) - 1.0).abs() < 1e-6, "{name}: {}", coco.to_table());
    }
    assert!(coco.to_table().starts_with("protocol: coco"), "{}", coco.to_table());
    assert!(coco.warnings.is_empty());

    let rs = scored(Task::Caption, &preds, &refs, CaptionScorers { protocol: Protocol::RsLvlm, ..CaptionScorers::default() });
    assert!((value(&rs, "BLEU-4") - 1.0).abs() < 1e-6, "{}", rs.to_table());
    // rouge-score keeps only the ASCII part ("un fleuve traverse une for t dense pr s du ch teau")
    // and nothing of the others: said in the table and the JSON, not only shown as a number.
    assert!(value(&rs, "ROUGE-L") < 0.2);
    let table = rs.to_table();
    assert!(table.contains("protocol: rs-lvlm") && table.contains("warning: rouge-score's tokenizer keeps only a-z and 0-9"), "{table}");
    let json = rs.to_json();
    assert_eq!(json["protocol"].as_str().map(|p| p.starts_with("rs-lvlm")), Some(true));
    assert!(json["warnings"][0].as_str().unwrap().contains("12 of 12"), "{json}");
}

/// Every case of `fixtures/detection.json` (`scripts/fixtures/make_detection_golden.py`): the
/// AP of each label with truth boxes equals the reference's (it computes in float32).
#[test]
fn average_precision_agrees_with_the_reference_implementation() {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/detection.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let coords = |v: &Value| -> [f64; 4] { std::array::from_fn(|i| v[i].as_f64().unwrap()) };
    for case in cases {
        let images = case["images"].as_array().unwrap();
        for (label, expected) in case["ap"].as_object().unwrap() {
            let truths: Vec<Vec<[f64; 4]>> = images
                .iter()
                .map(|image| image["truths"].as_array().unwrap().iter().filter(|t| t[4] == label.as_str()).map(coords).collect())
                .collect();
            let detections: Vec<Detection> = images
                .iter()
                .enumerate()
                .flat_map(|(i, image)| {
                    image["predictions"].as_array().unwrap().iter().filter(|p| p[4] == label.as_str()).map(move |p| Detection {
                        image: i,
                        bbox: coords(p),
                        score: p[5].as_f64().unwrap(),
                    })
                })
                .collect();
            let ap = evaluate(&truths, &detections).average_precision.unwrap();
            let expected = expected.as_f64().unwrap();
            assert!((ap - expected).abs() < 1e-6, "{} / {label}: AP {ap} vs the reference's {expected}", case["name"]);
        }
    }
}

/// A model that draws ships everywhere: its recall is perfect, and only the images without a
/// ship show what is wrong with it. Every answer format counts, and a malformed box is a parse
/// failure whose well-formed neighbours still count.
#[test]
fn detection_scores_count_false_detections_where_the_label_is_absent() {
    let refs: Vec<String> = [
        json!({"id": "a:ship", "type": "ship", "references": [[80, 160, 400, 480]], "image_size": [800, 800]}),
        json!({"id": "b:ship", "type": "ship", "references": [], "image_size": [800, 800]}),
        json!({"id": "c:ship", "type": "ship", "references": [], "image_size": [800, 800]}),
        json!({"id": "a:storage tank", "type": "storage tank", "references": [], "image_size": [800, 800]}),
        json!({"id": "b:storage tank", "type": "storage tank", "references": [[0, 0, 100, 100], [200, 200, 300, 300]], "image_size": [800, 800]}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    let preds: Vec<String> = [
        json!({"id": "a:ship", "answer": "<box>[100, 200, 500, 600]</box>", "score": 0.9}),
        json!({"id": "b:ship", "answer": "<box>[0, 0, 100, 100]</box> <box>[5, 5, 1]</box>", "score": 0.8}),
        json!({"id": "c:ship", "answer": [[0, 0, 50, 50], [60, 60, 90, 90]], "score": 0.7}),
        json!({"id": "a:storage tank", "answer": "", "score": 0.6}),
        json!({"id": "b:storage tank", "answer": "[[0, 0, 100, 100]]", "score": 0.5}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    let report = scored(Task::Detect, &preds, &refs, CaptionScorers::default());
    assert_eq!(value(&report, "AP@0.5[ship]"), 1.0, "the one ship ranks first");
    assert_eq!(value(&report, "recall[ship]"), 1.0);
    assert_eq!(value(&report, "precision[ship]"), 0.25, "one right box of four");
    assert_eq!(value(&report, "false detections per image without it[ship]"), 1.5, "three boxes on two images without a ship");
    assert_eq!(value(&report, "recall[storage tank]"), 0.5);
    assert_eq!(value(&report, "AP@0.5[storage tank]"), 0.5);
    assert_eq!(value(&report, "false detections per image without it[storage tank]"), 0.0, "the empty answer is right");
    assert_eq!(value(&report, "mAP@0.5"), 0.75);
    assert_eq!(value(&report, "false detections per image without the label"), 1.0, "3 boxes on 3 images without their label");
    assert_eq!(value(&report, "parse failures"), 1.0, "the unfinished box");
    assert!(report.to_table().contains("AP@0.5[ship]"));
    assert!(report.protocol.contains("VOC AP@0.5"));
}

/// A detection answer whose right box comes second: with the answer's one score the wrong box
/// ranks first (AP 0.5); with a score per box, as `strata eval` writes them, the sure box
/// ranks first (AP 1.0). A count of scores that does not match the boxes is not trusted.
#[test]
fn boxes_with_their_own_scores_rank_by_them() {
    let refs = vec![json!({"id": "a:ship", "type": "ship", "references": [[80, 160, 400, 480]], "image_size": [800, 800]}).to_string()];
    let answer = "<box>[600, 600, 700, 700]</box> <box>[1, 2]</box> <box>[100, 200, 500, 600]</box>";
    let ap = |prediction: Value| {
        let report = scored(Task::Detect, &[prediction.to_string()], &refs, CaptionScorers::default());
        value(&report, "AP@0.5[ship]")
    };
    assert_eq!(ap(json!({"id": "a:ship", "answer": answer, "score": 0.5})), 0.5);
    assert_eq!(ap(json!({"id": "a:ship", "answer": answer, "score": 0.5, "box_scores": [0.2, 0.9]})), 1.0);
    assert_eq!(ap(json!({"id": "a:ship", "answer": answer, "score": 0.5, "box_scores": [0.2, 0.9, 0.1]})), 0.5);
    let report = scored(
        Task::Detect,
        &[json!({"id": "a:ship", "answer": answer, "score": 0.5, "box_scores": [0.2, 0.9, 0.1]}).to_string()],
        &refs,
        CaptionScorers::default(),
    );
    assert!(report.warnings.iter().any(|w| w.contains("3 box_scores for 2 well-formed boxes")), "said: {:?}", report.warnings);
    // Grid boxes cannot be placed without the image's size: a parse failure, and a warning why.
    let sizeless = vec![json!({"id": "a:ship", "type": "ship", "references": [[80, 160, 400, 480]]}).to_string()];
    let report = scored(Task::Detect, &[json!({"id": "a:ship", "answer": answer}).to_string()], &sizeless, CaptionScorers::default());
    assert!(report.warnings.iter().any(|w| w.contains("no `image_size`")), "said: {:?}", report.warnings);
}

/// DIOR's detection layout: every image asked for every label of the split, references the
/// label's boxes (none where absent); the split list keeps its images only.
#[test]
fn dior_det_asks_every_image_for_every_label() {
    let dir = tempfile::tempdir().unwrap();
    let annotations = dir.path().join("Annotations/Horizontal Bounding Boxes");
    std::fs::create_dir_all(&annotations).unwrap();
    std::fs::create_dir_all(dir.path().join("ImageSets/Main")).unwrap();
    std::fs::create_dir_all(dir.path().join("JPEGImages-test")).unwrap();
    let voc = |file: &str, objects: &[(&str, [u32; 4])]| {
        let objects: String = objects
            .iter()
            .map(|(name, b)| {
                format!(
                    "<object><name>{name}</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>",
                    b[0], b[1], b[2], b[3]
                )
            })
            .collect();
        format!("<annotation><filename>{file}</filename><size><width>64</width><height>64</height><depth>3</depth></size>{objects}</annotation>")
    };
    std::fs::write(annotations.join("00001.xml"), voc("00001.jpg", &[("ship", [1, 2, 10, 12]), ("ship", [20, 20, 30, 30])])).unwrap();
    std::fs::write(annotations.join("00002.xml"), voc("00002.jpg", &[("storagetank", [5, 5, 9, 9])])).unwrap();
    std::fs::write(annotations.join("00003.xml"), voc("00003.jpg", &[("airplane", [5, 5, 9, 9])])).unwrap();
    std::fs::write(dir.path().join("ImageSets/Main/test.txt"), "00001\n00002\n").unwrap();
    let b = read("dior-det", dir.path(), None).unwrap();
    assert_eq!(b.task, Task::Detect);
    let ids: Vec<&str> = b.samples.iter().map(|s| s.reference.id.as_str()).collect();
    assert_eq!(ids, ["00001:ship", "00001:storagetank", "00002:ship", "00002:storagetank"], "airplane is not in the test split");
    assert_eq!(b.samples[0].reference.references, vec![json!([1.0, 2.0, 10.0, 12.0]), json!([20.0, 20.0, 30.0, 30.0])]);
    assert!(b.samples[2].reference.references.is_empty(), "no ship on 00002: a sample that measures false detections");
    assert_eq!(b.samples[1].reference.kind.as_deref(), Some("storagetank"));
    assert_eq!(b.samples[1].query, model::tasks::detect_prompt("storagetank"));
    assert!(b.samples[0].image.ends_with("JPEGImages-test/00001.jpg"));
    let err = read("dior-det", dir.path(), Some("val")).unwrap_err().to_string();
    assert!(err.contains("no list of the `val` split"), "{err}");

    // Refused before any model runs, naming the file: an id listed without its annotation
    // (which would drop the image, or a whole label, from the score), a box without area, an
    // empty name. A name is trimmed: ` ship ` is a ship.
    std::fs::write(dir.path().join("ImageSets/Main/test.txt"), "00001\n00002\n00002.jpg\n").unwrap();
    let err = read("dior-det", dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("test.txt") && err.contains("1 of its 3 image ids have no `<id>.xml`") && err.contains("`00002.jpg`"), "{err}");
    std::fs::write(dir.path().join("ImageSets/Main/test.txt"), "00001\n00002\n").unwrap();
    std::fs::write(annotations.join("00002.xml"), voc("00002.jpg", &[(" ship ", [5, 5, 9, 9]), ("storagetank", [5, 5, 9, 9])])).unwrap();
    let b = read("dior-det", dir.path(), None).unwrap();
    assert_eq!(b.samples[2].reference.id, "00002:ship");
    assert_eq!(b.samples[2].reference.references, vec![json!([5.0, 5.0, 9.0, 9.0])]);
    std::fs::write(annotations.join("00002.xml"), voc("00002.jpg", &[("storagetank", [9, 5, 5, 9])])).unwrap();
    let err = read("dior-det", dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("00002.xml") && err.contains("object 1 (`storagetank`)") && err.contains("xmin < xmax"), "{err}");
    std::fs::write(annotations.join("00002.xml"), voc("00002.jpg", &[("", [5, 5, 9, 9])])).unwrap();
    let err = read("dior-det", dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("00002.xml") && err.contains("empty `<name>`"), "{err}");
}

//! Detection scoring: AP@0.5 against the reference implementation's numbers, the detection
//! table of `strata eval score --task detect`, and the DIOR detection layout.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::io::Write as _;

use eval::answers::{read_predictions, read_references};
use eval::detection::{evaluate, Detection};
use eval::readers::read;
use eval::score::{score, CaptionScorers, Report, Task};
use serde_json::{json, Value};

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

fn file(lines: &[String]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    f
}

fn value(report: &Report, name: &str) -> f64 {
    report.metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no `{name}` in {:?}", report.metrics)).value
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
    let (preds, refs) = (file(&preds), file(&refs));
    let report =
        score(Task::Detect, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), CaptionScorers::default())
            .unwrap();
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
}

//! Scoring answer files: joining by id, missing and extra answers, each task's table.

use std::io::Write as _;

use eval::answers::{read_predictions, read_references};
use eval::score::{score, CaptionScorers, Task};

fn file(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    f
}

fn value(report: &eval::score::Report, name: &str) -> f64 {
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
    let report =
        score(Task::Caption, &read_predictions(preds.path()).unwrap(), &read_references(refs.path()).unwrap(), CaptionScorers::default())
            .unwrap();
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

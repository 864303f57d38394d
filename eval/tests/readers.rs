//! Each benchmark reader on a small fixture in the benchmark's published layout
//! (`scripts/fixtures/make_benchmark_fixtures.sh`), and clear errors for folders that do not
//! match.

use std::path::PathBuf;

use eval::readers::{class_name, read};
use eval::score::Task;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/benchmarks").join(name)
}

#[test]
fn class_folders_become_words() {
    assert_eq!(class_name("BareLand"), "bare land");
    assert_eq!(class_name("baseball_diamond"), "baseball diamond");
    assert_eq!(class_name("footballField"), "football field");
    assert_eq!(class_name("Airport"), "airport");
}

#[test]
fn aid_reads_one_folder_per_class() {
    let b = read("aid", &fixture("aid"), None).unwrap();
    assert_eq!(b.task, Task::Classify);
    assert_eq!(b.samples.len(), 4);
    let first = &b.samples[0];
    assert_eq!(first.reference.references, vec![json!("airport")]);
    assert_eq!(first.reference.classes.as_deref(), Some(&["airport".to_owned(), "bare land".to_owned(), "beach".to_owned()][..]));
    assert!(first.query.ends_with("from: airport, bare land, beach."), "{}", first.query);
    assert!(first.image.ends_with("Airport/airport_1.jpg"));
    assert!(b.samples.iter().all(|s| s.image.is_file()));
}

#[test]
fn ucm_captions_reads_the_test_split_of_dataset_json() {
    let b = read("ucm-captions", &fixture("ucm-captions"), None).unwrap();
    assert_eq!(b.task, Task::Caption);
    let ids: Vec<&str> = b.samples.iter().map(|s| s.reference.id.as_str()).collect();
    assert_eq!(ids, ["2.tif", "3.tif"]);
    assert_eq!(b.samples[0].reference.references.len(), 2);
    assert!(b.samples[0].image.ends_with("imgs/2.tif") && b.samples[0].image.is_file());
    let train = read("ucm-captions", &fixture("ucm-captions"), Some("train")).unwrap();
    assert_eq!(train.samples.len(), 1);
}

#[test]
fn nwpu_captions_reads_five_raw_captions_per_image() {
    let b = read("nwpu-captions", &fixture("nwpu-captions"), None).unwrap();
    assert_eq!(b.samples.len(), 1);
    assert_eq!(b.samples[0].reference.id, "airplane/airplane_001.jpg");
    assert_eq!(b.samples[0].reference.references.len(), 5);
    assert_eq!(b.samples[0].reference.references[0], json!("An airplane is parked on the apron."));
    assert!(b.samples[0].image.is_file());
}

#[test]
fn rsvqa_reads_active_questions_with_their_types_and_answers() {
    let b = read("rsvqa-lr", &fixture("rsvqa-lr"), None).unwrap();
    assert_eq!(b.task, Task::Vqa);
    assert_eq!(b.samples.len(), 3, "the inactive question is skipped");
    let count = &b.samples[1];
    assert_eq!(count.reference.kind.as_deref(), Some("count"));
    assert_eq!(count.reference.references, vec![json!("between 11 and 100")]);
    assert!(count.query.starts_with("How many buildings are there?"));
    assert!(count.image.ends_with("Images_LR/0.tif") && count.image.is_file());
}

#[test]
fn dior_rsvg_reads_one_sample_per_described_object_in_the_split() {
    let b = read("dior-rsvg", &fixture("dior-rsvg"), None).unwrap();
    assert_eq!(b.task, Task::Ground);
    assert_eq!(b.samples.len(), 2, "test.txt keeps 00001 only");
    assert_eq!(b.samples[1].reference.references, vec![json!([16.0, 16.0, 30.0, 31.0])]);
    assert_eq!(b.samples[1].reference.image_size, Some([32, 32]));
    assert_eq!(b.samples[1].query, "Locate: the large storage tank at the bottom right");
    // A split without its list is refused, not read as every image (train and test mixed).
    let err = read("dior-rsvg", &fixture("dior-rsvg"), Some("val")).unwrap_err().to_string();
    assert!(err.contains("cannot read the `val` split's list `val.txt`") && err.contains("the splits here are `test`"), "{err}");
}

#[test]
fn folders_in_the_wrong_layout_say_what_was_expected() {
    let err = read("aid", &fixture("ucm-captions"), None).unwrap_err().to_string();
    assert!(err.contains("one folder per class"), "{err}");
    let err = read("rsvqa-lr", &fixture("aid"), None).unwrap_err().to_string();
    assert!(err.contains("split_test_questions.json"), "{err}");
    let err = read("dior-rsvg", &fixture("aid"), None).unwrap_err().to_string();
    assert!(err.contains("Annotations/"), "{err}");
    let err = read("ucm-captions", &fixture("nwpu-captions"), None).unwrap_err().to_string();
    assert!(err.contains("expected layout"), "{err}");
    let err = read("imagenet", &fixture("aid"), None).unwrap_err().to_string();
    assert!(err.contains("unknown benchmark") && err.contains("rsvqa-hr"), "{err}");
    let err = read("ucm-captions", &fixture("ucm-captions"), Some("val")).unwrap_err().to_string();
    assert!(err.contains("no `val` samples"), "{err}");
}

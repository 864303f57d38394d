//! The description database: inputs in three formats, errors that name file and line, the
//! Parquet round trip, and builds that resume after an interruption.

#![allow(clippy::unwrap_used)] // a test fails by panicking; an unwrap says where

use std::path::{Path, PathBuf};

use model::encoders::TextEncoder;
use retrieval::database::{read_file, read_inputs, read_parquet, write_parquet};
use retrieval::{build_index, BuildOptions, SearchMode, SemanticIndex};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn jsonl_csv_and_text_inputs_are_read_with_ids() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = write(
        dir.path(),
        "a.jsonl",
        "{\"id\": \"h1\", \"text\": \"A harbour with ships\", \"level\": \"scene\"}\n\n{\"id\": \"h2\", \"text\": \"Cranes on a quay\"}\n{\"text\": \"A dry dock\"}\n",
    );
    let csv = write(dir.path(), "b.csv", "id,text,category\nc1,\"Fields, green and wide\",land\n,Unnamed row,\n");
    let txt = write(dir.path(), "c.txt", "A runway\n\n  A taxiway  \n");
    let all = read_inputs(&[jsonl, csv, txt]).unwrap();
    let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
    // An id is optional in every format: a missing one is FILE_STEM:LINE.
    assert_eq!(ids, ["h1", "h2", "a:4", "c1", "b:3", "c:1", "c:3"]);
    assert_eq!(all[3].text, "Fields, green and wide");
    assert_eq!(all[3].category.as_deref(), Some("land"));
    assert_eq!(all[0].level.as_deref(), Some("scene"));
    assert_eq!(all[6].text, "A taxiway");

    let parquet = dir.path().join("d.parquet");
    write_parquet(&parquet, &all).unwrap();
    assert_eq!(read_parquet(&parquet).unwrap(), all);
}

#[test]
fn bad_inputs_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "e.jsonl", "{\"id\": \"x\", \"text\": \"ok\"}\n{\"id\": \"y\", \"text\": \"  \"}\n");
    let err = read_file(&empty).unwrap_err().to_string();
    assert!(err.contains("e.jsonl") && err.contains("line 2") && err.contains("empty"), "{err}");
    let typo = write(dir.path(), "t.jsonl", "{\"id\": \"x\", \"text\": \"ok\"}\n{\"id\": \"y\", \"txt\": \"ok\"}\n");
    let err = read_file(&typo).unwrap_err().to_string();
    // The file's line, not serde's count within the line.
    assert!(err.contains("line 2, column ") && err.contains("unknown field `txt`") && !err.contains("at line 1"), "{err}");
    let no_text = write(dir.path(), "n.csv", "id,description\n1,foo\n");
    assert!(read_file(&no_text).unwrap_err().to_string().contains("no `text` column"));
    let one = write(dir.path(), "one.jsonl", "{\"id\": \"same\", \"text\": \"a\"}\n");
    let two = write(dir.path(), "two.jsonl", "{\"id\": \"same\", \"text\": \"b\"}\n");
    let err = read_inputs(&[one, two]).unwrap_err().to_string();
    assert!(err.contains("`same` appears twice") && err.contains("one.jsonl"), "{err}");
    assert!(read_inputs(&[dir.path().join("missing.txt")]).unwrap_err().to_string().contains("missing.txt"));
}

#[test]
fn an_interrupted_build_resumes_from_its_finished_shards() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..50).map(|i| format!("remote sensing description number {i}")).collect();
    let input = write(dir.path(), "many.txt", &lines.join("\n"));
    let out = dir.path().join("index");
    let mut encoder = TextEncoder::load(&TextEncoder::default_dir(), 128, 1).expect("encoder (run scripts/setup.sh)");
    let options = BuildOptions { shard_size: 10, hnsw: None };
    // Interrupt after the third shard.
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut seen = 0;
        build_index(std::slice::from_ref(&input), &out, &mut encoder, &options, &mut |_, _| {
            seen += 1;
            assert!(seen < 3, "simulated interruption");
        })
    }));
    assert!(interrupted.is_err());
    assert!(!out.join("index.json").exists(), "no manifest before the build finishes");
    let report = build_index(std::slice::from_ref(&input), &out, &mut encoder, &options, &mut |_, _| {}).unwrap();
    assert_eq!(report.count, 50);
    assert_eq!(report.resumed_shards, 3);
    let index = SemanticIndex::open(&out, model::tch::Device::Cpu).unwrap();
    let q = encoder.encode(&["remote sensing description number 42".to_owned()]).unwrap();
    let best = index.search(&q, 1, SearchMode::Exact).unwrap()[0][0];
    assert_eq!(index.description(best.row).id, "many:43");
    assert!(index.search(&q, 1, SearchMode::Approximate { ef: 10 }).unwrap_err().to_string().contains("no HNSW graph"));
}

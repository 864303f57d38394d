//! Readers for the public benchmarks' published layouts. Each turns a downloaded dataset
//! folder into samples: an image, the query the model gets, and the reference it is scored
//! against. A folder that does not look like the benchmark says what was expected.
//!
//! | benchmark | layout read |
//! | --- | --- |
//! | `aid`, `whu-rs19`, `nwpu-resisc45`, `siri-whu`, `meter-ml`, `fmow` | one folder per class, images anywhere below it |
//! | `ucm-captions`, `sydney-captions`, `rsicd` | `dataset*.json` (`images[].filename/split/sentences[].raw`) and the image folder |
//! | `nwpu-captions` | `dataset_nwpu.json` (`{class: [{filename, split, raw, raw_1..raw_4}]}`), images in `<class>/` folders |
//! | `rsvqa-lr`, `rsvqa-hr` | `*split_<split>_{questions,answers,images}.json`, images `<img_id>.tif` |
//! | `dior-rsvg` | `Annotations/*.xml` (VOC with `<description>` per object), `JPEGImages/`, optional `<split>.txt` of file stems |

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use model::tasks::{classify_prompt, detect_prompt, vqa_prompt, CAPTION_PROMPT};
use serde::Deserialize;
use serde_json::Value;

use crate::answers::Reference;
use crate::score::Task;
use crate::EvalError;

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "tif", "tiff", "bmp"];

/// One benchmark sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image file.
    pub image: PathBuf,
    /// What the model is asked.
    pub query: String,
    /// What it is scored against (the id is the sample id).
    pub reference: Reference,
}

/// A benchmark read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Benchmark {
    /// Its name.
    pub name: String,
    /// Its task.
    pub task: Task,
    /// Its samples, in a stable order.
    pub samples: Vec<Sample>,
}

/// Names `read` understands.
pub const BENCHMARKS: [&str; 14] = [
    "aid",
    "whu-rs19",
    "nwpu-resisc45",
    "siri-whu",
    "meter-ml",
    "fmow",
    "ucm-captions",
    "sydney-captions",
    "rsicd",
    "nwpu-captions",
    "rsvqa-lr",
    "rsvqa-hr",
    "dior-rsvg",
    "dior-det",
];

fn layout(path: &Path, reason: impl Into<String>) -> EvalError {
    EvalError::Input { path: path.to_owned(), reason: reason.into() }
}

fn reference(id: String, references: Vec<Value>) -> Reference {
    Reference { id, references, kind: None, classes: None, image_size: None, image: None, query: None }
}

/// Reads benchmark `name` from `dir`; `split` selects train/val/test where the layout has
/// splits (default `test`).
///
/// # Errors
/// [`EvalError::Input`] for an unknown name or a folder that does not match the layout.
pub fn read(name: &str, dir: &Path, split: Option<&str>) -> Result<Benchmark, EvalError> {
    if !dir.is_dir() {
        return Err(layout(dir, "not a folder"));
    }
    let split = split.unwrap_or("test");
    let (task, mut samples) = match name {
        "aid" | "whu-rs19" | "nwpu-resisc45" | "siri-whu" | "meter-ml" | "fmow" => (Task::Classify, folder_per_class(dir)?),
        "ucm-captions" | "sydney-captions" | "rsicd" => (Task::Caption, karpathy_captions(dir, split)?),
        "nwpu-captions" => (Task::Caption, nwpu_captions(dir, split)?),
        "rsvqa-lr" | "rsvqa-hr" => (Task::Vqa, rsvqa(dir, split)?),
        "dior-rsvg" => (Task::Ground, dior_rsvg(dir, split)?),
        "dior-det" => (Task::Detect, dior_det(dir, split)?),
        other => return Err(layout(dir, format!("unknown benchmark `{other}` (known: {})", BENCHMARKS.join(", ")))),
    };
    if samples.is_empty() {
        return Err(layout(dir, format!("no `{split}` samples found for `{name}`")));
    }
    for s in &mut samples {
        s.reference.image = Some(s.image.display().to_string());
        s.reference.query = Some(s.query.clone());
    }
    Ok(Benchmark { name: name.to_owned(), task, samples })
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn images_below(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EvalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| layout(dir, format!("cannot list: {e}")))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            images_below(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// A class folder's name as words: `BareLand` (AID), `baseball_diamond` (NWPU-RESISC45) and
/// `footballField` (WHU-RS19) become `bare land`, `baseball diamond`, `football field`.
pub fn class_name(folder: &str) -> String {
    let mut out = String::with_capacity(folder.len() + 4);
    let mut previous_lower = false;
    for c in folder.chars() {
        if c == '_' || c == '-' || c == ' ' {
            out.push(' ');
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower {
            out.push(' ');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        out.extend(c.to_lowercase());
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn folder_per_class(dir: &Path) -> Result<Vec<Sample>, EvalError> {
    let mut classes: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|e| layout(dir, format!("cannot list: {e}")))?;
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            let mut images = Vec::new();
            images_below(&entry.path(), &mut images)?;
            images.sort();
            if !images.is_empty() {
                classes.insert(class_name(&entry.file_name().to_string_lossy()), images);
            }
        }
    }
    if classes.len() < 2 {
        return Err(layout(dir, "expected one folder per class with images inside (e.g. `Airport/airport_1.jpg`), found fewer than two"));
    }
    let names: Vec<String> = classes.keys().cloned().collect();
    let query = classify_prompt(None, &names);
    Ok(classes
        .into_iter()
        .flat_map(|(class, images)| {
            let (names, query) = (names.clone(), query.clone());
            images.into_iter().map(move |image| {
                let id = image.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let mut reference = reference(format!("{class}/{id}"), vec![Value::String(class.clone())]);
                reference.classes = Some(names.clone());
                Sample { image, query: query.clone(), reference }
            })
        })
        .collect())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| layout(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| layout(path, format!("not in the expected layout: {e}")))
}

fn find_file(dir: &Path, matches: impl Fn(&str) -> bool, what: &str) -> Result<PathBuf, EvalError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| layout(dir, format!("cannot list: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&matches))
        .collect();
    found.sort();
    found.into_iter().next().ok_or_else(|| layout(dir, format!("expected {what}")))
}

/// The folder holding the images: the first of `candidates` that exists, else `dir`.
fn image_folder(dir: &Path, candidates: &[&str]) -> PathBuf {
    candidates.iter().map(|c| dir.join(c)).find(|p| p.is_dir()).unwrap_or_else(|| dir.to_owned())
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    filename: String,
    split: String,
    sentences: Vec<KarpathySentence>,
}

#[derive(Deserialize)]
struct KarpathySentence {
    raw: String,
}

fn karpathy_captions(dir: &Path, split: &str) -> Result<Vec<Sample>, EvalError> {
    let file = find_file(dir, |n| n.starts_with("dataset") && n.ends_with(".json"), "a `dataset*.json` caption file")?;
    let parsed: KarpathyFile = read_json(&file)?;
    let images = image_folder(dir, &["imgs", "images", "RSICD_images", "Images"]);
    Ok(parsed
        .images
        .into_iter()
        .filter(|i| i.split == split)
        .map(|i| {
            let refs = i.sentences.into_iter().map(|s| Value::String(s.raw.trim().to_owned())).collect();
            Sample { image: images.join(&i.filename), query: CAPTION_PROMPT.to_owned(), reference: reference(i.filename, refs) }
        })
        .collect())
}

fn nwpu_captions(dir: &Path, split: &str) -> Result<Vec<Sample>, EvalError> {
    let file = find_file(dir, |n| n.starts_with("dataset") && n.ends_with(".json"), "`dataset_nwpu.json`")?;
    let parsed: BTreeMap<String, Vec<HashMap<String, Value>>> = read_json(&file)?;
    let images = image_folder(dir, &["NWPU_images", "images"]);
    let mut samples = Vec::new();
    for (class, entries) in parsed {
        for entry in entries {
            if entry.get("split").and_then(Value::as_str) != Some(split) {
                continue;
            }
            let filename = entry
                .get("filename")
                .and_then(Value::as_str)
                .ok_or_else(|| layout(&file, format!("an entry of `{class}` has no filename")))?;
            let mut keys: Vec<&String> = entry.keys().filter(|k| *k == "raw" || k.starts_with("raw_")).collect();
            keys.sort();
            let refs = keys.iter().filter_map(|k| entry[*k].as_str()).map(|s| Value::String(s.trim().to_owned())).collect();
            samples.push(Sample {
                image: images.join(&class).join(filename),
                query: CAPTION_PROMPT.to_owned(),
                reference: reference(format!("{class}/{filename}"), refs),
            });
        }
    }
    Ok(samples)
}

#[derive(Deserialize)]
struct RsvqaQuestions {
    questions: Vec<RsvqaQuestion>,
}

#[derive(Deserialize)]
struct RsvqaQuestion {
    id: i64,
    img_id: i64,
    #[serde(rename = "type")]
    kind: String,
    question: String,
    answers_ids: Vec<i64>,
    #[serde(default = "yes")]
    active: bool,
}

#[derive(Deserialize)]
struct RsvqaAnswers {
    answers: Vec<RsvqaAnswer>,
}

#[derive(Deserialize)]
struct RsvqaAnswer {
    id: i64,
    answer: String,
}

const fn yes() -> bool {
    true
}

fn rsvqa(dir: &Path, split: &str) -> Result<Vec<Sample>, EvalError> {
    let suffix = |kind: &str| format!("split_{split}_{kind}.json");
    let questions_file = find_file(dir, |n| n.ends_with(&suffix("questions")), &format!("`*split_{split}_questions.json`"))?;
    let answers_file = find_file(dir, |n| n.ends_with(&suffix("answers")), &format!("`*split_{split}_answers.json`"))?;
    let questions: RsvqaQuestions = read_json(&questions_file)?;
    let answers: RsvqaAnswers = read_json(&answers_file)?;
    let by_id: HashMap<i64, String> = answers.answers.into_iter().map(|a| (a.id, a.answer)).collect();
    let images = image_folder(dir, &["Images_LR", "Data", "Images", "images"]);
    let mut samples = Vec::new();
    for q in questions.questions.into_iter().filter(|q| q.active) {
        let refs: Vec<Value> = q.answers_ids.iter().filter_map(|a| by_id.get(a)).map(|a| Value::String(a.clone())).collect();
        if refs.is_empty() {
            return Err(layout(&answers_file, format!("question {} has no answer", q.id)));
        }
        let mut r = reference(q.id.to_string(), refs);
        r.kind = Some(q.kind);
        samples.push(Sample { image: images.join(format!("{}.tif", q.img_id)), query: vqa_prompt(&q.question), reference: r });
    }
    Ok(samples)
}

#[derive(Deserialize)]
struct VocAnnotation {
    filename: String,
    size: Option<VocSize>,
    #[serde(default, rename = "object")]
    objects: Vec<VocObject>,
}

#[derive(Deserialize)]
struct VocSize {
    width: u32,
    height: u32,
}

#[derive(Deserialize)]
struct VocObject {
    name: String,
    bndbox: VocBox,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct VocBox {
    xmin: f64,
    ymin: f64,
    xmax: f64,
    ymax: f64,
}

fn dior_rsvg(dir: &Path, split: &str) -> Result<Vec<Sample>, EvalError> {
    let annotations = dir.join("Annotations");
    if !annotations.is_dir() {
        return Err(layout(dir, "expected an `Annotations/` folder of VOC XML files"));
    }
    // A folder with split lists must have the one asked for: falling back to every image would
    // mix the splits. A folder with none (a set of one's own) is read whole.
    let lists: Vec<&str> = ["train", "val", "test"].into_iter().filter(|s| dir.join(format!("{s}.txt")).is_file()).collect();
    let keep: Option<std::collections::HashSet<String>> = match std::fs::read_to_string(dir.join(format!("{split}.txt"))) {
        Ok(t) => Some(t.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect()),
        Err(_) if lists.is_empty() => None,
        Err(e) => {
            let have = lists.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
            return Err(layout(dir, format!("cannot read the `{split}` split's list `{split}.txt` ({e}); the splits here are {have}")));
        }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&annotations)
        .map_err(|e| layout(&annotations, format!("cannot list: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    files.sort();
    let images = image_folder(dir, &["JPEGImages", "images"]);
    let mut samples = Vec::new();
    for file in files {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if keep.as_ref().is_some_and(|k| !k.contains(&stem)) {
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(|e| layout(&file, format!("cannot read: {e}")))?;
        let annotation: VocAnnotation = quick_xml::de::from_str(&text).map_err(|e| layout(&file, format!("not a VOC annotation: {e}")))?;
        for (index, object) in annotation.objects.into_iter().enumerate() {
            let expression = object.description.clone().unwrap_or_else(|| object.name.clone());
            let b = object.bndbox;
            let mut r = reference(format!("{stem}#{index}"), vec![serde_json::json!([b.xmin, b.ymin, b.xmax, b.ymax])]);
            r.image_size = annotation.size.as_ref().map(|s| [s.width, s.height]);
            samples.push(Sample { image: images.join(&annotation.filename), query: detect_prompt(&expression), reference: r });
        }
    }
    Ok(samples)
}

/// DIOR's detection layout (and PASCAL VOC's): VOC XML per image under `Annotations/Horizontal
/// Bounding Boxes/` (DIOR) or `Annotations/`, the split's image ids in `ImageSets/Main/{split}.txt`
/// (or `Main/` or the folder itself), images in `JPEGImages-{split}/` (DIOR: `-test`, `-trainval`)
/// or `JPEGImages/`. Each image is asked for every label of the split (`Detect: <label>`), so
/// the images without a label measure false detections: a sample per image and label, its
/// references the boxes of that label (none where it is absent), its `type` the label.
fn dior_det(dir: &Path, split: &str) -> Result<Vec<Sample>, EvalError> {
    let annotations =
        ["Annotations/Horizontal Bounding Boxes", "Annotations"].iter().map(|a| dir.join(a)).find(|p| p.is_dir()).ok_or_else(|| {
            layout(dir, "expected an `Annotations/` folder of VOC XML files (DIOR: `Annotations/Horizontal Bounding Boxes/`)")
        })?;
    let list_dirs = [dir.join("ImageSets/Main"), dir.join("Main"), dir.to_owned()];
    let list = list_dirs.iter().map(|d| d.join(format!("{split}.txt"))).find(|p| p.is_file());
    let any_list = list_dirs.iter().any(|d| ["train", "val", "trainval", "test"].iter().any(|s| d.join(format!("{s}.txt")).is_file()));
    let keep: Option<std::collections::HashSet<String>> = match (&list, any_list) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| layout(path, format!("cannot read: {e}")))?;
            Some(text.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect())
        }
        // Lists for other splits only: falling back to every image would mix the splits.
        (None, true) => return Err(layout(dir, format!("no list of the `{split}` split (`ImageSets/Main/{split}.txt`)"))),
        (None, false) => None,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&annotations)
        .map_err(|e| layout(&annotations, format!("cannot list: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .filter(|p| keep.as_ref().is_none_or(|k| p.file_stem().is_some_and(|s| k.contains(s.to_string_lossy().as_ref()))))
        .collect();
    files.sort();
    // An id the list names without its annotation would drop that image (and maybe a whole
    // label) from the score without a word.
    if let (Some(keep), Some(list)) = (&keep, &list) {
        let found: std::collections::HashSet<String> =
            files.iter().filter_map(|f| f.file_stem()).map(|s| s.to_string_lossy().into_owned()).collect();
        let mut missing: Vec<&String> = keep.iter().filter(|id| !found.contains(*id)).collect();
        if !missing.is_empty() {
            missing.sort();
            let examples = missing.iter().take(3).map(|id| format!("`{id}`")).collect::<Vec<_>>().join(", ");
            return Err(layout(
                list,
                format!(
                    "{} of its {} image ids have no `<id>.xml` in `{}` (e.g. {examples}); ids are file names without the extension",
                    missing.len(),
                    keep.len(),
                    annotations.display()
                ),
            ));
        }
    }
    let split_images = if split == "test" { "JPEGImages-test" } else { "JPEGImages-trainval" };
    let images = image_folder(dir, &[split_images, "JPEGImages", "images"]);
    let mut parsed = Vec::with_capacity(files.len());
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| layout(&file, format!("cannot read: {e}")))?;
        let mut annotation: VocAnnotation =
            quick_xml::de::from_str(&text).map_err(|e| layout(&file, format!("not a VOC annotation: {e}")))?;
        // Checked here, before any model runs: a label is its trimmed name, and a reference box
        // must have area (VOC pixels, xmin < xmax and ymin < ymax) to be scored.
        for (index, object) in annotation.objects.iter_mut().enumerate() {
            object.name = object.name.trim().to_owned();
            let b = &object.bndbox;
            if object.name.is_empty() {
                return Err(layout(&file, format!("object {} has an empty `<name>`", index + 1)));
            }
            if !(b.xmin < b.xmax && b.ymin < b.ymax) {
                return Err(layout(
                    &file,
                    format!(
                        "object {} (`{}`): box [{}, {}, {}, {}] needs xmin < xmax and ymin < ymax",
                        index + 1,
                        object.name,
                        b.xmin,
                        b.ymin,
                        b.xmax,
                        b.ymax
                    ),
                ));
            }
        }
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        parsed.push((stem, annotation));
    }
    let mut labels: Vec<String> = parsed.iter().flat_map(|(_, a)| a.objects.iter().map(|o| o.name.clone())).collect();
    labels.sort();
    labels.dedup();
    let mut samples = Vec::with_capacity(parsed.len() * labels.len());
    for (stem, annotation) in &parsed {
        for label in &labels {
            let boxes = annotation
                .objects
                .iter()
                .filter(|o| &o.name == label)
                .map(|o| serde_json::json!([o.bndbox.xmin, o.bndbox.ymin, o.bndbox.xmax, o.bndbox.ymax]))
                .collect();
            let mut r = reference(format!("{stem}:{label}"), boxes);
            r.kind = Some(label.clone());
            r.image_size = annotation.size.as_ref().map(|s| [s.width, s.height]);
            samples.push(Sample { image: images.join(&annotation.filename), query: detect_prompt(label), reference: r });
        }
    }
    Ok(samples)
}

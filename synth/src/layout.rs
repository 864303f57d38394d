//! `strata data synth`: lays the scenes of this crate out on disk, once as training data
//! (LLaVA-style JSONL: `id`, `image`, `conversations` of `{from, value}`) and once as the
//! test split in the public benchmarks' layouts that `strata eval` reads (AID, UCM-Captions,
//! RSVQA, DIOR-RSVG, DIOR detection), so a model trained on the one is measured on the other.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use model::tasks::{classify_prompt, detect_prompt, vqa_prompt, CAPTION_PROMPT, GRID_MAX};
use operators::tile::write_rgb;
use rand::{seq::SliceRandom as _, Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::{Scene, CLASSES, LABELS};

/// What `strata data synth` lays out, and where.
#[derive(Debug, Clone)]
pub struct LayoutSettings {
    /// The data set's folder (emptied first when it holds an earlier data set).
    pub out: PathBuf,
    /// Renders of the training and test splits.
    pub n: u64,
    /// Seed of every render.
    pub seed: u64,
    /// Side of a render, pixels.
    pub size: u32,
    /// Share of the renders held out as the test split, in whole groups of six.
    pub test_fraction: f64,
    /// Georeferenced mosaic scenes for `strata batch`.
    pub scenes: u32,
    /// Renders per side of a mosaic scene.
    pub scene_grid: u32,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a layout wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Renders in the training split.
    pub train: u64,
    /// Renders in the test split.
    pub test: u64,
    /// File names of the mosaic scenes under `scenes/`.
    pub scenes: Vec<String>,
}

/// Seeds the per-scene class lists of the classify prompts apart from the scenes' own random
/// streams (`synth::scene` seeds with the bare seed), so the list says nothing of the scene.
const CLASS_LIST_STREAMS: u64 = 0x636c_6173_7365_7321;

/// The classes a classify turn offers: the scene's own and 1 to 5 others, in an order of the
/// scene's own. `strata batch --classify` and the benchmarks name their own sets in their own
/// orders (AID's is alphabetical); a model trained on one list of all six answered another
/// order, or a subset, with box tokens.
fn candidates(scene: &Scene, seed: u64, index: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ CLASS_LIST_STREAMS);
    rng.set_stream(index);
    let mut others: Vec<&str> = CLASSES.iter().copied().filter(|c| *c != scene.class).collect();
    others.shuffle(&mut rng);
    let keep = rng.random_range(1..=others.len());
    let mut list: Vec<String> = others[..keep].iter().map(|c| (*c).to_owned()).collect();
    list.push(scene.class.to_owned());
    list.shuffle(&mut rng);
    list
}

/// The label a detection turn asks for where it is absent, if scene `index` has such a turn:
/// scenes without objects in even groups of six, scenes with objects in odd ones, so absent
/// labels are asked as often as present ones (every scene with objects has a present turn, and
/// those are half the scenes) and of every class. The label turns with the group. A model
/// trained on present labels only drew ships on fields: nothing had ever asked it for
/// something that is not there.
fn absent_label(scene: &Scene, index: u64) -> Option<&'static str> {
    let group = index / CLASSES.len() as u64;
    if group.is_multiple_of(2) != scene.objects.is_empty() {
        return None;
    }
    let absent: Vec<&'static str> = LABELS.iter().copied().filter(|l| scene.objects.iter().all(|o| o.label != *l)).collect();
    (!absent.is_empty()).then(|| absent[(group / 2) as usize % absent.len()])
}

/// Scene `index` is held out when its group of six (one per class) falls in the test share.
fn is_test(index: u64, test_fraction: f64) -> bool {
    if test_fraction <= 0.0 {
        return false;
    }
    let every = (1.0 / test_fraction).round().max(1.0) as u64;
    (index / CLASSES.len() as u64) % every == every - 1
}

fn writer(path: &Path) -> anyhow::Result<BufWriter<File>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating `{}`", parent.display()))?;
    }
    Ok(BufWriter::new(File::create(path).with_context(|| format!("creating `{}`", path.display()))?))
}

fn line(out: &mut BufWriter<File>, value: &Value) -> anyhow::Result<()> {
    writeln!(out, "{value}").context("writing JSON lines")
}

/// Writes an RGB image with GDAL's `driver` (PNG, GTiff, JPEG).
fn write_image(scene: &Scene, driver: &str, path: &Path) -> anyhow::Result<()> {
    let size = scene.size as usize;
    write_rgb(&scene.rgb, (size, size), None, driver, path).with_context(|| format!("writing `{}`", path.display()))
}

/// The CRS of the generated scenes: WGS 84 / UTM zone 33N.
const MOSAIC_EPSG: u32 = 32633;
/// Ground sampling distance of the generated scenes, metres per pixel.
const MOSAIC_GSD: f64 = 10.0;

/// Writes `--scenes` georeferenced scenes under `scenes/`, for `strata batch`: each a
/// `--scene-grid`² mosaic of renders of `--size` pixels, so that tiles of `--size` pixels without
/// overlap fall exactly on one render each. The renders are indices `n` onwards, never part of
/// the training or test splits. `scenes/truth.jsonl` holds, per render, its place in the
/// mosaic (pixels), scene class, caption and object boxes (mosaic pixels). Returns the file
/// names.
///
/// The scenes lie side by side in UTM zone 33N at 10 m per pixel (an arbitrary place, so they
/// show on a map).
///
/// # Errors
/// When a file cannot be written or GDAL cannot build the CRS.
fn write_mosaics(args: &LayoutSettings, out: &Path) -> anyhow::Result<Vec<String>> {
    let dir = out.join("scenes");
    if args.scenes == 0 {
        return Ok(Vec::new());
    }
    let wkt = operators::tile::epsg_wkt(MOSAIC_EPSG).with_context(|| format!("building EPSG:{MOSAIC_EPSG}"))?;
    let (grid, size) = (args.scene_grid as usize, args.size as usize);
    let side = grid * size;
    let mut truth = writer(&dir.join("truth.jsonl"))?;
    let mut names = Vec::new();
    for k in 0..u64::from(args.scenes) {
        let name = format!("synth-scene-{}-{k}", args.seed);
        let mut rgb = vec![0u8; side * side * 3];
        for cell in 0..grid * grid {
            let (col, row) = (cell % grid, cell / grid);
            let index = args.n + k * (grid * grid) as u64 + cell as u64;
            let scene = crate::scene(args.seed, index, args.size);
            for y in 0..size {
                let from = y * size * 3;
                let to = ((row * size + y) * side + col * size) * 3;
                rgb[to..to + size * 3].copy_from_slice(&scene.rgb[from..from + size * 3]);
            }
            let (dx, dy) = ((col * size) as u32, (row * size) as u32);
            let objects: Vec<Value> = scene
                .objects
                .iter()
                .map(|o| json!({"label": o.label, "bbox": [o.bbox[0] + dx, o.bbox[1] + dy, o.bbox[2] + dx, o.bbox[3] + dy]}))
                .collect();
            line(
                &mut truth,
                &json!({"scene": name, "render": scene.id, "col_off": dx, "row_off": dy, "size": args.size, "class": scene.class,
                    "caption": scene.caption, "objects": objects}),
            )?;
        }
        // Side by side, 1 km apart, north of the equator in zone 33N.
        let x0 = 500_000.0 + k as f64 * (side as f64 * MOSAIC_GSD + 1_000.0);
        let geotransform = [x0, MOSAIC_GSD, 0.0, 6_100_000.0, 0.0, -MOSAIC_GSD];
        let file = format!("{name}.tif");
        let path = dir.join(&file);
        write_rgb(&rgb, (side, side), Some((geotransform, wkt.clone())), "GTiff", &path)
            .with_context(|| format!("writing `{}`", path.display()))?;
        names.push(file);
    }
    truth.flush()?;
    Ok(names)
}

/// A box in pixels as the model answers it: `<box>[x1, y1, x2, y2]</box>` on the 0–1000 grid.
fn grid_box(bbox: [u32; 4], size: u32) -> String {
    let g = |v: u32| (f64::from(v) * f64::from(GRID_MAX) / f64::from(size)).round() as u32;
    format!("<box>[{}, {}, {}, {}]</box>", g(bbox[0]), g(bbox[1]), g(bbox[2]), g(bbox[3]))
}

fn conversation(id: String, image: &str, query: &str, answer: &str) -> Value {
    json!({
        "id": id,
        "image": image,
        "conversations": [{"from": "human", "value": format!("<image>\n{query}")}, {"from": "gpt", "value": answer}],
    })
}

/// The benchmark folder name of a class (`Farmland`), as AID's folders are named.
fn folder(class: &str) -> String {
    let mut chars = class.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// What `synth` writes at the top of its folder.
const OUTPUTS: [&str; 7] = ["images", "train", "test", "eval", "scenes", "annotations.jsonl", "manifest.json"];

/// Removes an earlier data set from `out`, so a rerun with other settings leaves no stale
/// scene behind (an image or a benchmark sample of the old run would join the new one). A
/// folder holding anything else is refused rather than emptied.
fn clear_previous(out: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(out) else {
        if out.exists() {
            anyhow::bail!("`{}` exists and is not a folder", out.display());
        }
        return Ok(());
    };
    let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if names.is_empty() {
        return Ok(());
    }
    if !out.join("manifest.json").is_file() || names.iter().any(|n| !OUTPUTS.contains(&n.as_str())) {
        anyhow::bail!(
            "`{}` holds files that are not a `strata data synth` data set\nhint: give an empty or new folder with --out",
            out.display()
        );
    }
    for name in OUTPUTS {
        let path = out.join(name);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing the earlier `{}`", path.display()))?;
        } else if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing the earlier `{}`", path.display()))?;
        }
    }
    Ok(())
}

/// The largest side of a generated scene, pixels (its RGB is built in memory: 192 MiB).
const MAX_SCENE_SIDE: u32 = 8192;

/// Renders `settings.n` scenes and writes them as training data (`train/` and `test/`:
/// `align.jsonl`, `instruct.jsonl`, `retriever.jsonl` beside `images/`), as the test split in
/// the public benchmarks' layouts under `eval/` (AID, UCM-Captions, RSVQA, DIOR-RSVG, DIOR
/// detection, which `eval::readers` read), and `settings.scenes` georeferenced mosaics under `scenes/`.
///
/// # Errors
/// A folder holding something other than an earlier data set; scenes larger than
/// `MAX_SCENE_SIDE`; files that cannot be written.
pub fn write(settings: &LayoutSettings) -> anyhow::Result<Written> {
    let args = settings;
    let side = u64::from(args.scene_grid) * u64::from(args.size);
    if args.scenes > 0 && side > u64::from(MAX_SCENE_SIDE) {
        anyhow::bail!(
            "--scene-grid {} × --size {} makes scenes {side} pixels a side, more than {MAX_SCENE_SIDE}\nhint: fewer renders per side, or smaller ones",
            args.scene_grid,
            args.size
        );
    }
    let out = &args.out;
    clear_previous(out)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating `{}`", out.display()))?;
    let mut annotations = writer(&out.join("annotations.jsonl"))?;
    let mut files = std::collections::HashMap::new();
    for split in ["train", "test"] {
        for kind in ["align", "instruct", "retriever"] {
            files.insert((split, kind), writer(&out.join(split).join(format!("{kind}.jsonl")))?);
        }
    }
    let mut karpathy = Vec::new();
    let (mut rsvqa_questions, mut rsvqa_answers) = (Vec::new(), Vec::new());
    let (mut dior_train, mut dior_test, mut det_test) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = [0u64; 2];

    let bar = ProgressBar::with_draw_target(
        Some(args.n),
        if args.progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    bar.set_style(
        ProgressStyle::with_template("scenes {bar:30.cyan/blue} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for index in 0..args.n {
        let scene = crate::scene(args.seed, index, args.size);
        let test = is_test(index, args.test_fraction);
        let split = if test { "test" } else { "train" };
        counts[usize::from(test)] += 1;
        let image = format!("images/{}.png", scene.id);
        write_image(&scene, "PNG", &out.join(&image))?;
        line(&mut annotations, &json!({"image": image, "split": split, "scene": scene}))?;

        if let Some(w) = files.get_mut(&(split, "align")) {
            line(w, &conversation(format!("{}-caption", scene.id), &image, CAPTION_PROMPT, &scene.caption))?;
        }
        if let Some(w) = files.get_mut(&(split, "retriever")) {
            line(w, &json!({"id": scene.id, "image": image, "text": scene.caption}))?;
        }
        if let Some(w) = files.get_mut(&(split, "instruct")) {
            line(
                w,
                &conversation(
                    format!("{}-classify", scene.id),
                    &image,
                    &classify_prompt(None, &candidates(&scene, args.seed, index)),
                    scene.class,
                ),
            )?;
            line(w, &conversation(format!("{}-caption", scene.id), &image, CAPTION_PROMPT, &scene.caption))?;
            for (i, q) in scene.questions.iter().enumerate() {
                line(w, &conversation(format!("{}-vqa-{i}", scene.id), &image, &vqa_prompt(&q.question), &q.answer))?;
            }
            if let Some((expression, bbox)) = &scene.grounding {
                line(w, &conversation(format!("{}-ground", scene.id), &image, &detect_prompt(expression), &grid_box(*bbox, scene.size)))?;
            }
            // Detection as `strata batch --detect LABEL` asks it: every object of the label,
            // largest first (then top to bottom, left to right). A fixed order gives each box
            // one right place in the answer, and the first box is the one grounding names.
            if let Some(label) = scene.objects.first().map(|o| o.label) {
                let mut objects: Vec<&crate::Object> = scene.objects.iter().filter(|o| o.label == label).collect();
                objects.sort_by_key(|o| (std::cmp::Reverse(o.area()), o.bbox[1], o.bbox[0]));
                let boxes: Vec<String> = objects.iter().map(|o| grid_box(o.bbox, scene.size)).collect();
                line(w, &conversation(format!("{}-detect", scene.id), &image, &detect_prompt(label), &boxes.join(" ")))?;
            }
            // A label that is not there: the right answer is no box at all.
            if let Some(label) = absent_label(&scene, index) {
                line(w, &conversation(format!("{}-absent", scene.id), &image, &detect_prompt(label), ""))?;
            }
        }

        // The benchmark layouts (captions and grounding keep both splits, as the originals do).
        karpathy.push(json!({"filename": format!("{}.png", scene.id), "split": split, "sentences": [{"raw": scene.caption}]}));
        let eval = out.join("eval");
        if test {
            write_image(&scene, "PNG", &eval.join("aid").join(folder(scene.class)).join(format!("{}.png", scene.id)))?;
            write_image(&scene, "GTiff", &eval.join("rsvqa/Images").join(format!("{index}.tif")))?;
            // Detection as DIOR lays it out: every object of the scene, and scenes without any,
            // so that every label is asked where it is absent too.
            let det = eval.join("dior-det");
            write_image(&scene, "JPEG", &det.join("JPEGImages-test").join(format!("{}.jpg", scene.id)))?;
            let objects: String = scene
                .objects
                .iter()
                .map(|o| {
                    format!(
                        "  <object>\n    <name>{}</name>\n    <bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox>\n  </object>\n",
                        o.label,
                        o.bbox[0],
                        o.bbox[1],
                        // VOC's corners are the first and last pixel (inclusive); ours end after it.
                        o.bbox[2] - 1,
                        o.bbox[3] - 1
                    )
                })
                .collect();
            let xml = format!(
                "<annotation>\n  <filename>{id}.jpg</filename>\n  <size><width>{s}</width><height>{s}</height><depth>3</depth></size>\n{objects}</annotation>\n",
                id = scene.id,
                s = scene.size,
            );
            let annotations = det.join("Annotations/Horizontal Bounding Boxes");
            std::fs::create_dir_all(&annotations).with_context(|| format!("creating `{}`", annotations.display()))?;
            let path = annotations.join(format!("{}.xml", scene.id));
            std::fs::write(&path, xml).with_context(|| format!("writing `{}`", path.display()))?;
            det_test.push(scene.id.clone());
            for q in &scene.questions {
                let id = rsvqa_questions.len();
                rsvqa_questions
                    .push(json!({"id": id, "img_id": index, "type": q.kind, "question": q.question, "answers_ids": [id], "active": true}));
                rsvqa_answers.push(json!({"id": id, "question_id": id, "answer": q.answer, "active": true}));
            }
        }
        write_image(&scene, "PNG", &eval.join("ucm-captions/images").join(format!("{}.png", scene.id)))?;
        if let Some((expression, b)) = &scene.grounding {
            let dior = eval.join("dior-rsvg");
            write_image(&scene, "JPEG", &dior.join("JPEGImages").join(format!("{}.jpg", scene.id)))?;
            let xml = format!(
                "<annotation>\n  <filename>{id}.jpg</filename>\n  <size><width>{s}</width><height>{s}</height><depth>3</depth></size>\n  <object>\n    <name>{label}</name>\n    <description>{expression}</description>\n    <bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox>\n  </object>\n</annotation>\n",
                b[0],
                b[1],
                b[2],
                b[3],
                id = scene.id,
                s = scene.size,
                label = expression.trim_start_matches("the largest "),
            );
            let path = dior.join("Annotations").join(format!("{}.xml", scene.id));
            std::fs::create_dir_all(dior.join("Annotations"))?;
            std::fs::write(&path, xml).with_context(|| format!("writing `{}`", path.display()))?;
            if test { &mut dior_test } else { &mut dior_train }.push(scene.id.clone());
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for writer in files.values_mut() {
        writer.flush()?;
    }
    annotations.flush()?;
    let eval = out.join("eval");
    for layout in ["aid", "ucm-captions", "rsvqa", "dior-rsvg", "dior-det/ImageSets/Main"] {
        std::fs::create_dir_all(eval.join(layout)).with_context(|| format!("creating `{}`", eval.join(layout).display()))?;
    }
    if counts[1] == 0 && args.test_fraction > 0.0 {
        eprintln!(
            "warning: no scene was held out: the test split takes whole groups of six scenes, one group in {}; give --n {} or more for a test split",
            (1.0 / args.test_fraction).round(),
            6.0 * (1.0 / args.test_fraction).round()
        );
    }
    std::fs::write(eval.join("ucm-captions/dataset.json"), json!({"images": karpathy}).to_string())?;
    std::fs::write(eval.join("rsvqa/synth_split_test_questions.json"), json!({"questions": rsvqa_questions}).to_string())?;
    std::fs::write(eval.join("rsvqa/synth_split_test_answers.json"), json!({"answers": rsvqa_answers}).to_string())?;
    std::fs::write(eval.join("dior-rsvg/train.txt"), dior_train.join("\n") + "\n")?;
    std::fs::write(eval.join("dior-rsvg/test.txt"), dior_test.join("\n") + "\n")?;
    std::fs::write(eval.join("dior-det/ImageSets/Main/test.txt"), det_test.join("\n") + "\n")?;
    let mosaics = write_mosaics(args, out)?;
    let manifest = json!({"generator": "strata data synth", "seed": args.seed, "n": args.n, "size": args.size, "scenes": mosaics,
        "test_fraction": args.test_fraction, "train_scenes": counts[0], "test_scenes": counts[1], "classes": CLASSES});
    std::fs::write(out.join("manifest.json"), serde_json::to_string_pretty(&manifest)?)?;
    Ok(Written { train: counts[0], test: counts[1], scenes: mosaics })
}

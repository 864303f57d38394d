//! A learnable data set: procedurally rendered aerial-like scenes whose scene class, objects
//! (with boxes), caption and question–answer pairs are known because they were drawn.
//!
//! Six scene classes, each with its own ground cover and objects: farmland (fields), forest
//! (tree crowns), lake (a water body), residential (roads and buildings), harbor (water, a
//! quay and ships) and industrial (concrete and storage tanks). Every scene is a pure function
//! of `(seed, index)`: the same seed gives the same images and text on every machine (ChaCha8
//! streams, no floating-point state carried between scenes), and scene `i` does not depend on
//! how many scenes are generated.
//!
//! [`Scene`] holds the pixels and the annotations; [`layout::write`] lays a data set of them
//! out on disk (images, LLaVA-style JSONL, the public benchmarks' layouts, georeferenced
//! mosaic scenes), as `strata data synth` does.

#![warn(missing_docs)]

pub mod layout;
mod render;

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use render::Canvas;

/// The scene classes, in a fixed order.
pub const CLASSES: [&str; 6] = ["farmland", "forest", "lake", "residential", "harbor", "industrial"];

/// The object labels, in a fixed order (residential scenes hold buildings, harbors ships,
/// industrial scenes storage tanks).
pub const LABELS: [&str; 3] = ["building", "ship", "storage tank"];

/// An object drawn in a scene, with its box in pixels `[x1, y1, x2, y2]` (x2, y2 exclusive).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    /// What it is: `building`, `ship` or `storage tank`.
    pub label: &'static str,
    /// Its box, pixels.
    pub bbox: [u32; 4],
}

impl Object {
    /// The box's area, square pixels.
    pub fn area(&self) -> u32 {
        (self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1])
    }
}

/// A question about a scene and its answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Question {
    /// `presence`, `count` or `land_cover` (RSVQA-style question types).
    pub kind: &'static str,
    /// The question.
    pub question: String,
    /// The answer: a word or a number.
    pub answer: String,
}

/// One rendered scene and what it shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scene {
    /// `synth-<seed>-<index>`.
    pub id: String,
    /// Its scene class, one of [`CLASSES`].
    pub class: &'static str,
    /// Side of the square image, pixels.
    pub size: u32,
    /// Interleaved 8-bit RGB, `size × size × 3`, row-major.
    #[serde(skip)]
    pub rgb: Vec<u8>,
    /// Objects with boxes (none for farmland, forest and lake).
    pub objects: Vec<Object>,
    /// A one-sentence description.
    pub caption: String,
    /// Questions with their answers.
    pub questions: Vec<Question>,
    /// A referring expression and the box it names (the largest object), when there are objects.
    pub grounding: Option<(String, [u32; 4])>,
}

/// Renders scene `index` of the data set seeded `seed`, `size` pixels square.
///
/// The class cycles through [`CLASSES`] by index, so any six consecutive scenes hold every
/// class once; everything else is drawn from the scene's own random stream.
///
/// # Panics
/// When `size` is below 32 pixels (nothing recognisable fits).
pub fn scene(seed: u64, index: u64, size: u32) -> Scene {
    assert!(size >= 32, "scenes need at least 32 pixels a side");
    // One independent stream per scene: ChaCha8 with the scene index as stream number.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let class = CLASSES[(index % CLASSES.len() as u64) as usize];
    let mut canvas = Canvas::new(size);
    let objects = match class {
        "farmland" => {
            render::farmland(&mut canvas, &mut rng);
            Vec::new()
        }
        "forest" => {
            render::forest(&mut canvas, &mut rng);
            Vec::new()
        }
        "lake" => {
            render::lake(&mut canvas, &mut rng);
            Vec::new()
        }
        "residential" => render::residential(&mut canvas, &mut rng),
        "harbor" => render::harbor(&mut canvas, &mut rng),
        _ => render::industrial(&mut canvas, &mut rng),
    };
    canvas.noise(&mut rng, 6);
    let caption = caption(class, &objects, &mut rng);
    let questions = questions(class, &objects);
    // Ties (only when the prominent object found no room) go to the topmost, then leftmost.
    let grounding = objects
        .iter()
        .min_by_key(|o| (std::cmp::Reverse(o.area()), o.bbox[1], o.bbox[0]))
        .map(|o| (format!("the largest {}", o.label), o.bbox));
    Scene { id: format!("synth-{seed}-{index}"), class, size, rgb: canvas.into_rgb(), objects, caption, questions, grounding }
}

fn plural(label: &str, n: usize) -> String {
    match (label, n) {
        (_, 1) => label.to_owned(),
        ("storage tank", _) => "storage tanks".to_owned(),
        (l, _) => format!("{l}s"),
    }
}

const NUMBERS: [&str; 10] = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];

fn caption(class: &str, objects: &[Object], rng: &mut ChaCha8Rng) -> String {
    let n = objects.len();
    let count = |label: &str| format!("{} {}", NUMBERS.get(n).copied().unwrap_or("many"), plural(label, n));
    let choices: [String; 3] = match class {
        "farmland" => [
            "Farmland divided into rectangular fields of green and brown crops.".into(),
            "An aerial view of cultivated fields in parallel strips.".into(),
            "Agricultural land with several fields of different crops.".into(),
        ],
        "forest" => [
            "A dense forest with many green tree crowns.".into(),
            "An aerial view of a forest covered by trees.".into(),
            "Thick woodland with dark green canopy.".into(),
        ],
        "lake" => [
            "A lake of blue water surrounded by green land.".into(),
            "An aerial view of a lake in the middle of grassland.".into(),
            "A body of calm blue water with green shores.".into(),
        ],
        "residential" => [
            format!("A residential area with {} along gray roads.", count("building")),
            format!("An aerial view of houses: {} beside the streets.", count("building")),
            format!("A neighbourhood with roads and {}.", count("building")),
        ],
        "harbor" => [
            format!("A harbor with {} on blue water next to a quay.", count("ship")),
            format!("An aerial view of a port where {} are moored.", count("ship")),
            format!("A harbor: a concrete quay and {} in the water.", count("ship")),
        ],
        _ => [
            format!("An industrial area with {} on concrete ground.", count("storage tank")),
            format!("An aerial view of a tank farm with {}.", count("storage tank")),
            format!("Industrial land where {} stand on gray concrete.", count("storage tank")),
        ],
    };
    let pick = rng.random_range(0..choices.len());
    choices[pick].clone()
}

fn questions(class: &str, objects: &[Object]) -> Vec<Question> {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut out = vec![
        Question { kind: "land_cover", question: "What is the main land cover in the image?".into(), answer: class.to_owned() },
        Question { kind: "presence", question: "Is there water in the image?".into(), answer: yes_no(matches!(class, "lake" | "harbor")) },
    ];
    let label = match class {
        "residential" => Some("building"),
        "harbor" => Some("ship"),
        "industrial" => Some("storage tank"),
        _ => None,
    };
    if let Some(label) = label {
        out.push(Question {
            kind: "count",
            question: format!("How many {} are there?", plural(label, 2)),
            answer: objects.len().to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scene_is_a_pure_function_of_seed_and_index() {
        let a = scene(7, 11, 64);
        let b = scene(7, 11, 64);
        assert_eq!(a, b);
        assert_ne!(a.rgb, scene(8, 11, 64).rgb, "another seed draws another scene");
        assert_ne!(a.rgb, scene(7, 17, 64).rgb, "the same class at another index differs");
    }

    #[test]
    fn every_class_appears_in_six_consecutive_scenes_with_its_objects() {
        let classes: Vec<&str> = (0..6).map(|i| scene(1, i, 96).class).collect();
        assert_eq!(classes, CLASSES.to_vec());
        for i in 0..60 {
            let s = scene(3, i, 96);
            assert_eq!(s.rgb.len(), 96 * 96 * 3);
            let expected = match s.class {
                "residential" => Some("building"),
                "harbor" => Some("ship"),
                "industrial" => Some("storage tank"),
                _ => None,
            };
            match expected {
                Some(label) => {
                    assert!(!s.objects.is_empty() && s.objects.iter().all(|o| o.label == label), "{s:?}");
                    let count = s.questions.iter().find(|q| q.kind == "count").unwrap();
                    assert_eq!(count.answer, s.objects.len().to_string());
                    assert!(s.grounding.is_some());
                }
                None => assert!(s.objects.is_empty() && s.grounding.is_none()),
            }
            // The object `the largest …` names is plain to see: twice the area of any other.
            if let Some((_, target)) = &s.grounding {
                let area = |b: &[u32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
                for o in s.objects.iter().filter(|o| o.bbox != *target) {
                    assert!(area(target) >= 2 * area(&o.bbox), "{s:?}");
                }
            }
            for o in &s.objects {
                assert!(o.bbox[0] < o.bbox[2] && o.bbox[1] < o.bbox[3] && o.bbox[2] <= 96 && o.bbox[3] <= 96, "{o:?}");
            }
            assert!(s.caption.ends_with('.'));
        }
    }

    #[test]
    fn classes_look_different_on_average() {
        // Mean colour per class over a few scenes: water classes are bluer than the others,
        // forest is the darkest green: a model can learn them from pixels.
        let mean = |class_index: u64| {
            let mut sum = [0f64; 3];
            for k in 0..4 {
                let s = scene(5, class_index + 6 * k, 64);
                for px in s.rgb.chunks(3) {
                    for c in 0..3 {
                        sum[c] += f64::from(px[c]);
                    }
                }
            }
            sum.map(|v| v / (4.0 * 64.0 * 64.0))
        };
        let (farmland, forest, lake, harbor, industrial) = (mean(0), mean(1), mean(2), mean(4), mean(5));
        let blueness = |rgb: [f64; 3]| rgb[2] - rgb[0];
        for water in [lake, harbor] {
            for land in [farmland, forest, industrial] {
                assert!(blueness(water) > blueness(land) + 8.0, "water is bluer: {water:?} vs {land:?}");
            }
        }
        assert!(forest[1] > forest[0] && forest[1] > forest[2], "forest is green: {forest:?}");
        assert!(forest.iter().sum::<f64>() < industrial.iter().sum::<f64>(), "forest is darker than concrete");
    }
}

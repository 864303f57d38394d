//! Scene requests: what a user or a bucket notification asks Strata to do with one scene.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{check_id, stac::StacItem, Message, SchemaError, SCHEMA_VERSION};

/// A request to process one scene: where it is, which tasks to run on its tiles, how to tile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneRequest {
    /// Message schema version, [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Id of the request (a batch job or a notification) this scene belongs to.
    pub request_id: String,
    /// Id of the scene; used in object keys and table rows.
    pub scene_id: String,
    /// Where the scene's pixels are.
    pub source: SceneSource,
    /// Tasks to run on every tile; empty means tiling only.
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// How to cut the scene into tiles.
    #[serde(default)]
    pub tiling: TilingOptions,
    /// When the request was made; filled in by the producer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<DateTime<Utc>>,
}

impl SceneRequest {
    /// A request with default tiling and no tasks, stamped now.
    pub fn new(request_id: impl Into<String>, scene_id: impl Into<String>, source: SceneSource) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            request_id: request_id.into(),
            scene_id: scene_id.into(),
            source,
            tasks: Vec::new(),
            tiling: TilingOptions::default(),
            submitted_at: Some(Utc::now()),
        }
    }
}

/// Where a scene's pixels live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SceneSource {
    /// One raster object, by URL (`file://`, `s3://`, `memory://`) or local path.
    Uri {
        /// The object's URL.
        uri: String,
    },
    /// A STAC Item; its assets are resolved relative to `base_uri` when relative.
    StacItem {
        /// The item.
        item: Box<StacItem>,
        /// Where the item was read from, for resolving relative asset hrefs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_uri: Option<String>,
    },
}

/// One task to run on every tile, with its prompt material (MODEL_SPEC section 6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskSpec {
    /// Describe the tile.
    Caption {
        /// Instruction; defaults to "Describe the image in detail."
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    /// Pick one class from a list.
    Classify {
        /// Candidate class names.
        classes: Vec<String>,
        /// Instruction; the class list is appended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<String>,
    },
    /// Answer a question about the tile.
    Vqa {
        /// The question.
        question: String,
    },
    /// Find every instance of a target and return boxes.
    Detect {
        /// What to find, e.g. "ship" or "the flooded buildings".
        target: String,
    },
}

/// The kind of a task, as stored in the `task` column of result tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// [`TaskSpec::Caption`].
    Caption,
    /// [`TaskSpec::Classify`].
    Classify,
    /// [`TaskSpec::Vqa`].
    Vqa,
    /// [`TaskSpec::Detect`].
    Detect,
}

impl TaskKind {
    /// The name used in tables and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Caption => "caption",
            Self::Classify => "classify",
            Self::Vqa => "vqa",
            Self::Detect => "detect",
        }
    }
}

impl TaskSpec {
    /// The task's kind.
    pub const fn kind(&self) -> TaskKind {
        match self {
            Self::Caption { .. } => TaskKind::Caption,
            Self::Classify { .. } => TaskKind::Classify,
            Self::Vqa { .. } => TaskKind::Vqa,
            Self::Detect { .. } => TaskKind::Detect,
        }
    }

    fn validate(&self, index: usize, kind: &'static str) -> Result<(), SchemaError> {
        let invalid =
            |field: &str, reason: &str| SchemaError::Invalid { kind, field: format!("tasks[{index}].{field}"), reason: reason.to_owned() };
        match self {
            Self::Classify { classes, .. } => {
                if classes.is_empty() {
                    return Err(invalid("classes", "must list at least one class"));
                }
                if let Some(i) = classes.iter().position(|c| c.trim().is_empty()) {
                    return Err(invalid(&format!("classes[{i}]"), "must not be blank"));
                }
            }
            Self::Vqa { question } if question.trim().is_empty() => return Err(invalid("question", "must not be blank")),
            Self::Detect { target } if target.trim().is_empty() => return Err(invalid("target", "must not be blank")),
            _ => {}
        }
        for (field, text, one_line) in self.texts() {
            if let Some(reason) = prompt_text_problem(text, one_line) {
                return Err(invalid(&field, &reason));
            }
        }
        Ok(())
    }

    /// The texts a user gave that go into the prompt, with their field names and whether
    /// each must be one line (a class name, a question, a target; an instruction may run over
    /// several lines).
    fn texts(&self) -> Vec<(String, &str, bool)> {
        match self {
            Self::Caption { prompt } => prompt.iter().map(|p| ("prompt".to_owned(), p.as_str(), false)).collect(),
            Self::Classify { classes, prompt } => classes
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("classes[{i}]"), c.as_str(), true))
                .chain(prompt.iter().map(|p| ("prompt".to_owned(), p.as_str(), false)))
                .collect(),
            Self::Vqa { question } => vec![("question".to_owned(), question.as_str(), true)],
            Self::Detect { target } => vec![("target".to_owned(), target.as_str(), true)],
        }
    }
}

/// Why a user's text cannot go into a prompt as it is, if it cannot: a line break or another
/// control character would split a class list, a question or a target across lines of the
/// user's turn, and a chat-template token (`<|im_end|>`, `<|im_start|>`, `<|endoftext|>`, ...)
/// would be read by the tokenizer as the token itself, ending the user's turn early
/// (MODEL_SPEC section 6: one user turn).
fn prompt_text_problem(text: &str, one_line: bool) -> Option<String> {
    let control = |c: char| c.is_control() && (one_line || !matches!(c, '\n' | '\r' | '\t'));
    if let Some(c) = text.chars().find(|&c| control(c)) {
        let line = if one_line { " (it must be one line of text)" } else { "" };
        return Some(format!("must not hold the control character {c:?}{line}"));
    }
    let start = text.find("<|")?;
    let end = text[start..].find("|>")?;
    let token = &text[start..start + end + 2];
    Some(format!("must not hold the chat-template token `{token}`"))
}

const fn default_tile_size_px() -> u32 {
    512
}
const fn default_overlap_px() -> u32 {
    64
}
const fn default_output_size_px() -> u32 {
    384
}

/// How a scene is cut into tiles. Defaults suit the model's 384 px input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TilingOptions {
    /// Side of the square source window, in scene pixels.
    #[serde(default = "default_tile_size_px")]
    pub tile_size_px: u32,
    /// Overlap between neighbouring windows, in scene pixels.
    #[serde(default = "default_overlap_px")]
    pub overlap_px: u32,
    /// Side of the tile image written for the model, in pixels.
    #[serde(default = "default_output_size_px")]
    pub output_size_px: u32,
    /// 1-based band indices mapped to R, G, B (or one band, shown as grey); `None` picks a
    /// default from the band count and sensor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bands: Option<Vec<u32>>,
    /// Nodata value overriding the one the raster declares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodata: Option<f64>,
    /// STAC asset keys to read (one visual asset, or three band assets in R, G, B order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stac_assets: Option<Vec<String>>,
    /// How band values become 8-bit colours; `None` is [`Stretch::Percentile`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stretch: Option<Stretch>,
}

/// How band values become the 8-bit colours of tile images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stretch {
    /// A linear stretch between the 2nd and 98th percentiles of each band, measured once per
    /// scene: for sensor values (reflectance, digital numbers of any bit depth).
    Percentile,
    /// Values are display colours already (8-bit RGB, as an orthophoto or a rendered scene
    /// stores them) and are written as they are, clamped to 0–255.
    None,
}

impl std::str::FromStr for Stretch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "percentile" => Ok(Self::Percentile),
            "none" => Ok(Self::None),
            other => Err(format!("`{other}` is not a stretch; use `percentile` or `none`")),
        }
    }
}

impl Default for TilingOptions {
    fn default() -> Self {
        Self {
            tile_size_px: default_tile_size_px(),
            overlap_px: default_overlap_px(),
            output_size_px: default_output_size_px(),
            bands: None,
            nodata: None,
            stac_assets: None,
            stretch: None,
        }
    }
}

impl TilingOptions {
    /// Checks ranges and consistency.
    ///
    /// # Errors
    /// [`SchemaError::Invalid`] naming the field under `tiling.`.
    pub fn validate(&self, kind: &'static str) -> Result<(), SchemaError> {
        let invalid = |field: &str, reason: String| SchemaError::Invalid { kind, field: format!("tiling.{field}"), reason };
        if !(16..=16_384).contains(&self.tile_size_px) {
            return Err(invalid("tile_size_px", format!("{} is outside 16..=16384", self.tile_size_px)));
        }
        if self.overlap_px >= self.tile_size_px {
            return Err(invalid("overlap_px", format!("{} must be smaller than tile_size_px ({})", self.overlap_px, self.tile_size_px)));
        }
        if !(16..=4096).contains(&self.output_size_px) {
            return Err(invalid("output_size_px", format!("{} is outside 16..=4096", self.output_size_px)));
        }
        if let Some(bands) = &self.bands {
            if !(bands.len() == 1 || bands.len() == 3) {
                return Err(invalid("bands", format!("lists {} bands; give 1 or 3", bands.len())));
            }
            if let Some(i) = bands.iter().position(|&b| b == 0) {
                return Err(invalid(&format!("bands[{i}]"), "band indices start at 1".to_owned()));
            }
        }
        if let Some(nodata) = self.nodata {
            if nodata.is_nan() {
                return Err(invalid("nodata", "must be a number, not NaN".to_owned()));
            }
        }
        Ok(())
    }
}

impl Message for SceneRequest {
    const KIND: &'static str = "scene_request";

    fn validate(&self) -> Result<(), SchemaError> {
        check_id(Self::KIND, "request_id", &self.request_id)?;
        check_id(Self::KIND, "scene_id", &self.scene_id)?;
        match &self.source {
            SceneSource::Uri { uri } if uri.trim().is_empty() => {
                return Err(SchemaError::Invalid {
                    kind: Self::KIND,
                    field: "source.uri".to_owned(),
                    reason: "must not be empty".to_owned(),
                })
            }
            SceneSource::StacItem { item, .. } => {
                let invalid = |field: String, reason: String| SchemaError::Invalid {
                    kind: Self::KIND,
                    field: format!("source.item.{field}"),
                    reason,
                };
                if item.item_type != "Feature" {
                    return Err(invalid("type".into(), format!("is {:?}, expected \"Feature\"", item.item_type)));
                }
                if item.assets.is_empty() {
                    return Err(invalid("assets".into(), "the item has no assets".into()));
                }
                if let Some((key, _)) = item.assets.iter().find(|(_, a)| a.href.trim().is_empty()) {
                    return Err(invalid(format!("assets.{key}.href"), "must not be empty".into()));
                }
            }
            SceneSource::Uri { .. } => {}
        }
        for (index, task) in self.tasks.iter().enumerate() {
            task.validate(index, Self::KIND)?;
        }
        self.tiling.validate(Self::KIND)
    }
}

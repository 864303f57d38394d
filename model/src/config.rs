//! The whole model's `config.json` (MODEL_SPEC §7): the vision tower and LLM sections are the
//! Hugging Face configs of the checkpoints they come from; the rest configures the new modules.
//! Parsed, then validated into a form the builders can trust.

use serde::{Deserialize, Serialize};

use crate::experts::ExpertsConfig;
use crate::lora::LoraConfig;
use crate::projector::default_levels;
use crate::prompter::PrompterConfig;
use crate::qwen2::Qwen2Config;
use crate::siglip::SiglipVisionConfig;
use crate::ModelError;

const fn default_format_version() -> u32 {
    1
}
fn default_system_prompt() -> String {
    "You are a helpful assistant.".to_owned()
}
const fn default_top_k() -> usize {
    5
}
/// MODEL_SPEC §3 "Budgets": `k = 5` descriptions of the paper's length (~100 words, ~130
/// tokens each) must fit, with room for longer ones.
pub(crate) const fn default_max_semantic_tokens() -> i64 {
    1024
}
/// Room for a classification query that lists every class of a large benchmark (fMoW's 62).
pub(crate) const fn default_max_query_tokens() -> i64 {
    1024
}
const fn default_half() -> [f64; 3] {
    [0.5, 0.5, 0.5]
}

/// How many retrieved descriptions feed the prompter, and how many of their tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalConfig {
    /// Descriptions per image `k`.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
    /// Token budget for the concatenated descriptions (semantic tokens `S`); descriptions
    /// that do not fit are dropped whole, from the last, and the answer says how many were
    /// used. Default 1024 (five paper-length descriptions).
    #[serde(default = "default_max_semantic_tokens")]
    pub max_semantic_tokens: i64,
}

impl Default for RetrievalConfig {
    fn default() -> Self {
        Self { top_k: default_top_k(), max_semantic_tokens: default_max_semantic_tokens() }
    }
}

/// Pixel normalisation of the vision tower (SigLIP: mean 0.5, std 0.5 per channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Per-channel mean subtracted from pixels in `[0, 1]`.
    #[serde(default = "default_half")]
    pub mean: [f64; 3],
    /// Per-channel standard deviation divided out.
    #[serde(default = "default_half")]
    pub std: [f64; 3],
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self { mean: default_half(), std: default_half() }
    }
}

/// Everything needed to build the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StrataConfig {
    /// Version of this file's layout.
    #[serde(default = "default_format_version")]
    pub format_version: u32,
    /// The SigLIP vision tower (its Hugging Face `vision_config`).
    pub vision: SiglipVisionConfig,
    /// Encoder layers used as semantic levels (1-based; default: 1/3, 2/3 and the last).
    #[serde(default)]
    pub vision_levels: Option<Vec<i64>>,
    /// Pixel normalisation.
    #[serde(default)]
    pub image: ImageConfig,
    /// The Qwen2 / Qwen2.5 LLM (its Hugging Face `config.json`).
    pub llm: Qwen2Config,
    /// Multi-level visual prompter.
    #[serde(default)]
    pub prompter: PrompterConfig,
    /// Semantic experts.
    #[serde(default)]
    pub experts: ExpertsConfig,
    /// LoRA on the LLM; `null` for none.
    #[serde(default = "default_lora")]
    pub lora: Option<LoraConfig>,
    /// Retrieval budget.
    #[serde(default)]
    pub retrieval: RetrievalConfig,
    /// System message of the chat template.
    #[serde(default = "default_system_prompt")]
    pub system_prompt: String,
    /// Longest user query accepted, in tokens; a longer query is refused, never cut.
    /// Default 1024.
    #[serde(default = "default_max_query_tokens")]
    pub max_query_tokens: i64,
}

#[allow(clippy::unnecessary_wraps)] // serde default for an Option field
fn default_lora() -> Option<LoraConfig> {
    Some(LoraConfig::default())
}

impl StrataConfig {
    /// Parses and validates `config.json` text.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the field at fault.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let config: Self = serde_json::from_str(text).map_err(|e| ModelError::Config { reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The semantic levels (1-based encoder layers).
    pub fn levels(&self) -> Vec<i64> {
        self.vision_levels.clone().unwrap_or_else(|| default_levels(self.vision.num_hidden_layers))
    }

    /// Semantic-augmented tokens per image, `L · N_a`.
    pub fn semantic_tokens(&self) -> i64 {
        self.levels().len() as i64 * self.prompter.num_aggregation_tokens
    }

    /// Checks what serde cannot: ranges and divisibility.
    ///
    /// # Errors
    /// [`ModelError::Config`] naming the field at fault.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |reason: String| Err(ModelError::Config { reason });
        if self.format_version != 1 {
            return fail(format!("format_version {} is not supported (expected 1)", self.format_version));
        }
        // Re-run the section checks (the sections may have been built in code).
        SiglipVisionConfig::from_json(&serde_json::to_string(&self.vision).unwrap_or_default())?;
        Qwen2Config::from_json(&serde_json::to_string(&self.llm).unwrap_or_default())?;
        let levels = self.levels();
        if levels.is_empty() || levels.iter().any(|l| *l < 1 || *l > self.vision.num_hidden_layers) {
            return fail(format!("vision_levels {levels:?} must be non-empty layers in 1..={}", self.vision.num_hidden_layers));
        }
        if self.prompter.num_aggregation_tokens < 1 {
            return fail("prompter.num_aggregation_tokens must be at least 1".into());
        }
        let heads = self.prompter.num_heads.unwrap_or(self.llm.num_attention_heads);
        if heads < 1 || self.llm.hidden_size % heads != 0 {
            return fail(format!("prompter.num_heads {heads} does not divide llm.hidden_size {}", self.llm.hidden_size));
        }
        if self.prompter.mlp_ratio <= 0.0 {
            return fail("prompter.mlp_ratio must be positive".into());
        }
        if self.experts.rank < 1 || self.experts.every < 0 {
            return fail("experts.rank must be at least 1 and experts.every at least 0".into());
        }
        if let Some(lora) = &self.lora {
            if lora.rank < 1 || !(0.0..1.0).contains(&lora.dropout) {
                return fail("lora.rank must be at least 1 and lora.dropout in [0, 1)".into());
            }
            if let Some(bad) = lora.targets.iter().find(|t| !LoraConfig::ALL_TARGETS.contains(&t.as_str())) {
                return fail(format!("lora.targets: unknown projection `{bad}` (known: {})", LoraConfig::ALL_TARGETS.join(", ")));
            }
        }
        if self.max_query_tokens < 1 || self.retrieval.max_semantic_tokens < 0 {
            return fail("max_query_tokens must be at least 1 and retrieval.max_semantic_tokens at least 0".into());
        }
        Ok(())
    }
}

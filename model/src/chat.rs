//! Tokenizer (`tokenizer.json` through the `tokenizers` crate) and the Qwen2.5 chat template
//! (ChatML) with the model's placeholders: the user turn carries the image tokens and the
//! semantic-augmented tokens before the query text,
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n[image][semantic]\n{query}<|im_end|>\n<|im_start|>assistant\n{response}<|im_end|>
//! ```
//!
//! The placeholders are not text: the request is returned as token-id segments around them, and
//! the model splices embeddings in between.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::ModelError;

/// ChatML turn delimiters used by Qwen2 / Qwen2.5.
pub const IM_START: &str = "<|im_start|>";
/// End of a turn; also the stop token of generation.
pub const IM_END: &str = "<|im_end|>";
/// Qwen's end-of-text token.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// One request in token ids, split around the embedding placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRequest {
    /// System turn and the start of the user turn, before the image.
    pub prefix: Vec<i64>,
    /// The query text alone (the prompter's `Q`).
    pub query: Vec<i64>,
    /// After the placeholders: `\n{query}<|im_end|>\n<|im_start|>assistant\n`.
    pub suffix: Vec<i64>,
    /// The retrieved descriptions, concatenated and cut to the budget (the prompter's `S`).
    pub semantic: Vec<i64>,
    /// The response followed by `<|im_end|>` (training only).
    pub response: Option<Vec<i64>>,
}

/// A tokenizer that knows the chat template.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    im_end: i64,
    end_of_text: Option<i64>,
    system_prompt: String,
}

impl ChatTokenizer {
    /// Loads `tokenizer.json`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the file cannot be read or lacks the ChatML tokens.
    pub fn from_file(path: &Path, system_prompt: &str) -> Result<Self, ModelError> {
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer { reason: format!("cannot load `{}`: {e}", path.display()) })?;
        Self::new(tokenizer, system_prompt)
    }

    /// Wraps a loaded tokenizer.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when the ChatML tokens are missing.
    pub fn new(tokenizer: Tokenizer, system_prompt: &str) -> Result<Self, ModelError> {
        let id = |token: &str| tokenizer.token_to_id(token).map(i64::from);
        let missing = |token: &str| ModelError::Tokenizer {
            reason: format!("the vocabulary has no `{token}` token; a Qwen2/Qwen2.5 (ChatML) tokenizer.json is needed"),
        };
        id(IM_START).ok_or_else(|| missing(IM_START))?;
        let im_end = id(IM_END).ok_or_else(|| missing(IM_END))?;
        Ok(Self { end_of_text: id(END_OF_TEXT), tokenizer, im_end, system_prompt: system_prompt.to_owned() })
    }

    /// Ids of text (special tokens written in it are recognised).
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when encoding fails.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, ModelError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer { reason: e.to_string() })?;
        Ok(encoding.get_ids().iter().map(|id| i64::from(*id)).collect())
    }

    /// Text of ids, special tokens dropped.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when an id is outside the vocabulary.
    pub fn decode(&self, ids: &[i64]) -> Result<String, ModelError> {
        let ids: Vec<u32> = ids.iter().filter_map(|id| u32::try_from(*id).ok()).collect();
        self.tokenizer.decode(&ids, true).map_err(|e| ModelError::Tokenizer { reason: e.to_string() })
    }

    /// Tokens that end generation: `<|im_end|>` and, when present, `<|endoftext|>`.
    pub fn stop_tokens(&self) -> Vec<i64> {
        std::iter::once(self.im_end).chain(self.end_of_text).collect()
    }

    /// The pad id used for batches (never attended).
    pub fn pad_token(&self) -> i64 {
        self.end_of_text.unwrap_or(self.im_end)
    }

    /// Encodes one request. The query is cut to `max_query_tokens`, the descriptions (joined
    /// by newlines, in rank order) to `max_semantic_tokens`.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] when encoding fails.
    pub fn encode_request(
        &self,
        query: &str,
        descriptions: &[String],
        response: Option<&str>,
        (max_query_tokens, max_semantic_tokens): (i64, i64),
    ) -> Result<EncodedRequest, ModelError> {
        let prefix = self.encode(&format!("{IM_START}system\n{}{IM_END}\n{IM_START}user\n", self.system_prompt))?;
        let mut query_ids = self.encode(query)?;
        query_ids.truncate(usize::try_from(max_query_tokens).unwrap_or(0));
        let query_text = self.decode(&query_ids)?;
        let suffix = self.encode(&format!("\n{query_text}{IM_END}\n{IM_START}assistant\n"))?;
        let mut semantic = self.encode(&descriptions.join("\n"))?;
        semantic.truncate(usize::try_from(max_semantic_tokens).unwrap_or(0));
        let response = response.map(|text| self.encode(&format!("{text}{IM_END}"))).transpose()?;
        Ok(EncodedRequest { prefix, query: query_ids, suffix, semantic, response })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> ChatTokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/tokenizer.json");
        ChatTokenizer::from_file(&path, "You are a helpful assistant.").unwrap()
    }

    #[test]
    fn the_request_renders_as_the_qwen_chat_template_around_the_placeholders() {
        let t = tokenizer();
        let r =
            t.encode_request("What colour is the image?", &["A red forest.".into(), "A river.".into()], Some("red"), (256, 256)).unwrap();
        assert_eq!(t.decode(&r.query).unwrap(), "What colour is the image?");
        let all: Vec<i64> = [r.prefix.clone(), r.suffix.clone(), r.response.clone().unwrap()].concat();
        let text = t.tokenizer.decode(&all.iter().map(|i| *i as u32).collect::<Vec<_>>(), false).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             \nWhat colour is the image?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>"
        );
        assert_eq!(t.decode(&r.semantic).unwrap(), "A red forest.\nA river.");
        assert_eq!(*r.response.unwrap().last().unwrap(), t.stop_tokens()[0]);
    }

    #[test]
    fn budgets_cut_query_and_descriptions() {
        let t = tokenizer();
        let r = t.encode_request("Describe the image in detail.", &["A red forest.".into()], None, (2, 3)).unwrap();
        assert_eq!(r.query.len(), 2);
        assert_eq!(r.semantic.len(), 3);
        assert!(r.response.is_none());
    }

    #[test]
    fn a_tokenizer_without_chatml_tokens_is_refused() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#;
        let err = ChatTokenizer::new(json.parse::<Tokenizer>().unwrap(), "x").unwrap_err();
        assert!(err.to_string().contains("<|im_start|>"), "{err}");
    }
}

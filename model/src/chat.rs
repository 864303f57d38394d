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
    /// The retrieved descriptions that fit the budget, concatenated (the prompter's `S`).
    pub semantic: Vec<i64>,
    /// How many of the given descriptions `semantic` holds: the first `descriptions_used`,
    /// whole; the rest did not fit the budget.
    pub descriptions_used: usize,
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

    /// One past the largest token id (added tokens included): the embedding table must have
    /// at least this many rows.
    pub fn id_bound(&self) -> i64 {
        self.tokenizer.get_vocab(true).values().max().map_or(0, |id| i64::from(*id) + 1)
    }

    /// The pad id used for batches (never attended).
    pub fn pad_token(&self) -> i64 {
        self.end_of_text.unwrap_or(self.im_end)
    }

    /// Checks that `query` (a task's prompt text) fits `max_query_tokens`.
    ///
    /// # Errors
    /// [`ModelError::Request`] when it is longer (it is never cut: a cut class list or
    /// question would change the task); [`ModelError::Tokenizer`] when encoding fails.
    pub fn check_query(&self, query: &str, max_query_tokens: i64) -> Result<(), ModelError> {
        self.query_ids(query, max_query_tokens).map(drop)
    }

    /// The query's token ids, when it fits (see [`Self::check_query`]).
    fn query_ids(&self, query: &str, max_query_tokens: i64) -> Result<Vec<i64>, ModelError> {
        let ids = self.encode(query)?;
        let tokens = ids.len();
        if i64::try_from(tokens).unwrap_or(i64::MAX) > max_query_tokens {
            return Err(ModelError::Request {
                reason: format!(
                    "the task's text has {tokens} tokens, over this model's budget of {max_query_tokens} (`max_query_tokens`); \
                     it is refused rather than cut\n\
                     hint: shorten the class list, question or target"
                ),
            });
        }
        Ok(ids)
    }

    /// Encodes one request. The descriptions are joined by newlines in rank order; those that
    /// do not fit `max_semantic_tokens` are dropped whole, from the last (never cut inside a
    /// description), and [`EncodedRequest::descriptions_used`] says how many remain.
    ///
    /// # Errors
    /// [`ModelError::Request`] when the query is longer than `max_query_tokens` (it is never
    /// cut: a cut class list or question would change the task); [`ModelError::Tokenizer`]
    /// when encoding fails.
    pub fn encode_request(
        &self,
        query: &str,
        descriptions: &[String],
        response: Option<&str>,
        (max_query_tokens, max_semantic_tokens): (i64, i64),
    ) -> Result<EncodedRequest, ModelError> {
        let prefix = self.encode(&format!("{IM_START}system\n{}{IM_END}\n{IM_START}user\n", self.system_prompt))?;
        let query_ids = self.query_ids(query, max_query_tokens)?;
        let suffix = self.encode(&format!("\n{query}{IM_END}\n{IM_START}assistant\n"))?;
        let (semantic, descriptions_used) = self.encode_descriptions(descriptions, max_semantic_tokens)?;
        if descriptions_used < descriptions.len() {
            tracing::info!(
                used = descriptions_used,
                retrieved = descriptions.len(),
                budget = max_semantic_tokens,
                "Retrieved descriptions over the semantic token budget were dropped."
            );
        }
        let response = response.map(|text| self.encode(&format!("{text}{IM_END}"))).transpose()?;
        Ok(EncodedRequest { prefix, query: query_ids, suffix, semantic, descriptions_used, response })
    }

    /// The longest rank-order run of whole descriptions whose newline-joined tokens fit
    /// `budget`, and its length.
    fn encode_descriptions(&self, descriptions: &[String], budget: i64) -> Result<(Vec<i64>, usize), ModelError> {
        let budget = usize::try_from(budget).unwrap_or(0);
        let mut best = (Vec::new(), 0);
        for used in 1..=descriptions.len() {
            let ids = self.encode(&descriptions[..used].join("\n"))?;
            if ids.len() > budget {
                break;
            }
            best = (ids, used);
        }
        Ok(best)
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

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn descriptions_over_the_budget_are_dropped_whole_from_the_end() {
        let t = tokenizer();
        let descriptions = texts(&["A red forest.", "A river with a bridge.", "A beach."]);
        let two = t.encode(&descriptions[..2].join("\n")).unwrap();
        let query = "Describe the image in detail.";
        let r = t.encode_request(query, &descriptions, None, (64, two.len() as i64)).unwrap();
        assert_eq!(r.descriptions_used, 2);
        assert_eq!(r.semantic, two);
        assert_eq!(t.decode(&r.semantic).unwrap(), "A red forest.\nA river with a bridge.");
        // One token short of two descriptions: the second goes whole, nothing of it is kept.
        let r = t.encode_request(query, &descriptions, None, (64, two.len() as i64 - 1)).unwrap();
        assert_eq!((r.descriptions_used, t.decode(&r.semantic).unwrap().as_str()), (1, "A red forest."));
        let r = t.encode_request(query, &descriptions, None, (64, 0)).unwrap();
        assert_eq!((r.descriptions_used, r.semantic.len()), (0, 0));
        assert!(r.response.is_none());
    }

    #[test]
    fn a_query_over_its_budget_is_refused_not_cut() {
        let t = tokenizer();
        let query = "Choose the best category describing the image from: airport, beach, forest, harbour";
        let length = t.encode(query).unwrap().len();
        let r = t.encode_request(query, &[], None, (length as i64, 16)).unwrap();
        assert_eq!(t.decode(&r.query).unwrap(), query);
        let err = t.encode_request(query, &[], None, (length as i64 - 1, 16)).unwrap_err();
        assert!(matches!(err, ModelError::Request { .. }), "{err:?}");
        assert_eq!(t.check_query(query, length as i64 - 1).unwrap_err().to_string(), err.to_string(), "one check");
        let message = err.to_string();
        assert!(
            message.contains(&format!("{length} tokens"))
                && message.contains(&format!("budget of {} (`max_query_tokens`)", length - 1))
                && message.contains("hint: shorten the class list, question or target"),
            "{message}"
        );
    }

    /// A paper-length description (100 words) in words the fixture tokenizer knows whole, so
    /// it costs about what the real Qwen tokenizer charges for one (~130 tokens).
    fn paper_length_description(seed: usize) -> String {
        let sentences = [
            "The image shows a green forest with a river nearby",
            "It is seen from above",
            "A bridge over the river is on the left",
            "The area with white and red roofs is a residential area",
            "There are farmlands and bare land near the forest",
            "A parking lot with black and yellow lines is in the image",
            "The harbour with a ship is on the right",
        ];
        let mut words: Vec<&str> = Vec::new();
        let mut sentence = seed;
        while words.len() < 100 {
            words.extend(sentences[sentence % sentences.len()].split(' '));
            sentence += 1;
        }
        words.truncate(100);
        format!("{}.", words.join(" "))
    }

    #[test]
    fn five_paper_length_descriptions_fit_the_default_budgets() {
        let t = tokenizer();
        let budgets = (crate::config::default_max_query_tokens(), crate::config::default_max_semantic_tokens());
        let descriptions: Vec<String> = (0..5).map(paper_length_description).collect();
        for d in &descriptions {
            assert_eq!(d.split(' ').count(), 100);
            let tokens = t.encode(d).unwrap().len();
            assert!((120..=160).contains(&tokens), "a paper-length description costs ~130 tokens, this one {tokens}");
        }
        let r = t.encode_request("Describe the image in detail.", &descriptions, None, budgets).unwrap();
        assert_eq!(r.descriptions_used, 5);
        assert_eq!(t.decode(&r.semantic).unwrap(), descriptions.join("\n"));
    }

    #[test]
    fn a_62_class_list_fits_the_default_query_budget() {
        // fMoW's classes (without false_detection), as a classification query lists them.
        let classes = "airport, airport hangar, airport terminal, amusement park, aquaculture, archaeological site, barn, \
            border checkpoint, burial site, car dealership, construction site, crop field, dam, debris or rubble, \
            educational institution, electric substation, factory or powerplant, fire station, flooded road, fountain, \
            gas station, golf course, ground transportation station, helipad, hospital, impoverished settlement, \
            interchange, lake or pond, lighthouse, military facility, multi-unit residential, nuclear powerplant, \
            office building, oil or gas facility, park, parking lot or garage, place of worship, police station, port, \
            prison, race track, railway bridge, recreational facility, road bridge, runway, shipyard, shopping mall, \
            single-unit residential, smokestack, solar farm, space facility, stadium, storage tank, surface mine, \
            swimming pool, toll booth, tower, tunnel opening, waste disposal, water treatment facility, wind farm, zoo";
        assert_eq!(classes.split(", ").count(), 62);
        let query = format!("Choose the best category describing the image from: {classes}");
        let t = tokenizer();
        let budgets = (crate::config::default_max_query_tokens(), crate::config::default_max_semantic_tokens());
        let r = t.encode_request(&query, &[], None, budgets).unwrap();
        assert_eq!(t.decode(&r.query).unwrap(), query);
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

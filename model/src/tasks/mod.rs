//! Task adapters (MODEL_SPEC section 6): the text a task puts in front of the model, and total
//! parsers for what comes back. Every parser accepts any string — model output is untrusted —
//! and reports what it could not use instead of panicking.

mod answers;
mod boxes;
pub mod grammar;

pub use answers::{match_class, normalize_answer};
pub use boxes::{parse_boxes, GridBox, ParsedBoxes, GRID_MAX};

/// Default instruction for captioning.
pub const CAPTION_PROMPT: &str = "Describe the image in detail.";
/// Default instruction for classification; the class list is appended.
pub const CLASSIFY_PROMPT: &str = "Choose the best category describing the image from:";

/// The query text for a classification task.
pub fn classify_prompt(instruction: Option<&str>, classes: &[String]) -> String {
    format!("{} {}.", instruction.unwrap_or(CLASSIFY_PROMPT).trim_end(), classes.join(", "))
}

/// The query text for a VQA task.
pub fn vqa_prompt(question: &str) -> String {
    format!("{} Answer with a single word or phrase.", question.trim())
}

/// What starts every grounding / detection query.
const DETECT_PREFIX: &str = "Locate:";

/// The query text for grounding / detection; the model answers with `<box>` tags.
pub fn detect_prompt(target: &str) -> String {
    format!("{DETECT_PREFIX} {}", target.trim())
}

/// Whether `query` asks for boxes (it was made by [`detect_prompt`]): such answers are
/// generated under the box grammar ([`grammar`]).
pub fn expects_boxes(query: &str) -> bool {
    query.trim_start().starts_with(DETECT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_carry_their_material() {
        let classes = vec!["airport".to_owned(), "bare land".to_owned()];
        assert_eq!(classify_prompt(None, &classes), "Choose the best category describing the image from: airport, bare land.");
        assert_eq!(detect_prompt(" the ship on the left "), "Locate: the ship on the left");
        assert!(vqa_prompt("Is there a road?").starts_with("Is there a road?"));
    }
}

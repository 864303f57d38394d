//! Caption tokenisation shared by the n-gram metrics: lower-case, every run of characters
//! other than `a-z0-9` is a separator. This is `rouge-score`'s tokenizer (without stemming);
//! BLEU, METEOR and CIDEr get the same tokens, and the reference script feeds the Python
//! scorers these tokens joined by spaces, so both sides score identical inputs. (The COCO
//! toolkit's PTB tokenizer needs Java and is not used.)

/// Tokens of `text`.
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    lower.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit())).filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_on_anything_but_ascii_letters_and_digits() {
        assert_eq!(super::tokenize("Many  buildings, 2 roads; a CAR-park!"), ["many", "buildings", "2", "roads", "a", "car", "park"]);
        assert_eq!(super::tokenize("café"), ["caf"]);
        assert!(super::tokenize(" ,; ").is_empty());
    }
}

//! rouge-score's tokenizer (`rouge_score.tokenize`, without stemming): lower-case, every run
//! of characters other than `a-z0-9` is a separator. ROUGE under the `rs-lvlm` protocol uses
//! it because rouge-score does; the other metrics tokenise as their protocol says
//! ([`crate::protocol`]). Text in other scripts, and accented Latin letters, are separators
//! here, exactly as in rouge-score: [`dropped_by_rouge_score`] tells when that happens so the
//! report can say so instead of printing a silent 0.

/// Tokens of `text`.
pub fn tokenize(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    lower.split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit())).filter(|t| !t.is_empty()).map(str::to_owned).collect()
}

/// True when rouge-score's tokenizer loses letters or digits of `text`: any alphanumeric
/// character outside ASCII (Cyrillic, CJK, Greek, `é`...).
pub fn dropped_by_rouge_score(text: &str) -> bool {
    text.chars().any(|c| c.is_alphanumeric() && !c.is_ascii())
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_on_anything_but_ascii_letters_and_digits() {
        assert_eq!(super::tokenize("Many  buildings, 2 roads; a CAR-park!"), ["many", "buildings", "2", "roads", "a", "car", "park"]);
        assert_eq!(super::tokenize("café"), ["caf"]);
        assert!(super::tokenize(" ,; ").is_empty());
        assert!(super::tokenize("много белых самолётов").is_empty());
    }

    #[test]
    fn tells_when_letters_would_be_dropped() {
        assert!(super::dropped_by_rouge_score("café"));
        assert!(super::dropped_by_rouge_score("许多 白色"));
        assert!(!super::dropped_by_rouge_score("a well-maintained road, 1,000 cars!"));
    }
}

//! nltk 3.9.2's `word_tokenize`, the tokenizer remote-sensing LVLM evaluation scripts feed
//! `meteor_score` and BLEU: sentences first, then `NLTKWordTokenizer` (the improved Treebank
//! tokenizer) on each. The Treebank part is NLTK's own list of regular expressions, ported as
//! written (`nltk/tokenize/destructive.py`), so punctuation tokens are kept (`road`, `,`),
//! clitics split (`it`, `'s`), quotes become `` `` `` and `''`, and any script passes through.
//!
//! Sentences: `word_tokenize` splits with the Punkt model `punkt_tab/english`, a data download
//! that is not part of nltk. Here a sentence ends at a whitespace-separated chunk ending in `.`,
//! `?` or `!` — what nltk's `PunktSentenceTokenizer()` does without trained parameters, and the
//! trained English model too except after the abbreviations it learned (`U.S.`, `e.g.`, `Dr.`:
//! there the trained model keeps `U.S.` one token, this gives `U.S` `.`). It matters only for
//! periods, because the Treebank rules split a period only at the end of a sentence.

use std::sync::OnceLock;

use fancy_regex::Regex;

/// `(pattern, replacement)` in NLTK's order; replacements in `fancy_regex` syntax.
const RULES: [(&str, &str); 28] = [
    // STARTING_QUOTES
    (r"([«“‘„]|[`]+)", " ${1} "),
    (r#"^""#, "``"),
    (r"(``)", " ${1} "),
    (r#"([ (\[{<])("|'{2})"#, "${1} `` "),
    (r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b", "${1} ${2}"),
    // PUNCTUATION
    (r#"([^.])(\.)([\])}>"'»”’ ]*)\s*$"#, "${1} ${2} ${3} "),
    (r"([:,])([^\d])", " ${1} ${2}"),
    (r"([:,])$", " ${1} "),
    (r"\.{2,}", " ${0} "),
    (r"[;@#$%&]", " ${0} "),
    (r#"([^.])(\.)([\])}>"']*)\s*$"#, "${1} ${2}${3} "),
    (r"[?!]", " ${0} "),
    (r"([^'])' ", "${1} ' "),
    (r"[*]", " ${0} "),
    // PARENS_BRACKETS, DOUBLE_DASHES
    (r"[\]\[(){}<>]", " ${0} "),
    (r"--", " -- "),
    // ENDING_QUOTES (after the text is padded with a space on each side)
    (r"([»”’])", " ${1} "),
    (r"''", " '' "),
    (r#"""#, " '' "),
    (r"\s+", " "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", "${1} ${2} "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "${1} ${2} "),
    // CONTRACTIONS2
    (r"(?i)\b(can)(not)\b", " ${1} ${2} "),
    (r"(?i)\b(d)('ye)\b", " ${1} ${2} "),
    (r"(?i)\b(gim)(me)\b", " ${1} ${2} "),
    (r"(?i)\b(gon)(na)\b", " ${1} ${2} "),
    (r"(?i)\b(got)(ta)\b", " ${1} ${2} "),
    (r"(?i)\b(lem)(me)\b", " ${1} ${2} "),
];

/// The rules that run after the padding (index into [`RULES`]).
const PAD_BEFORE: usize = 16;

/// The rest of CONTRACTIONS2 and CONTRACTIONS3.
const MORE_CONTRACTIONS: [&str; 4] = [r"(?i)\b(more)('n)\b", r"(?i)\b(wan)(na)(?=\s)", r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b"];

fn compiled() -> &'static [(Regex, &'static str)] {
    static RULES_COMPILED: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    RULES_COMPILED.get_or_init(|| {
        RULES
            .iter()
            .copied()
            .chain(MORE_CONTRACTIONS.iter().map(|p| (*p, " ${1} ${2} ")))
            // The patterns are constants, checked by the tests below.
            .filter_map(|(pattern, replacement)| Regex::new(pattern).ok().map(|r| (r, replacement)))
            .collect()
    })
}

/// `NLTKWordTokenizer().tokenize(sentence)`.
pub fn treebank(sentence: &str) -> Vec<String> {
    let mut text = sentence.to_owned();
    for (i, (regex, replacement)) in compiled().iter().enumerate() {
        if i == PAD_BEFORE {
            text = format!(" {text} ");
        }
        // A backtracking limit is the only error; caption-length text never reaches it, and
        // leaving the text as it is then is the least surprising outcome.
        if let Ok(replaced) = regex.try_replacen(&text, 0, *replacement) {
            text = replaced.into_owned();
        }
    }
    text.split_whitespace().map(str::to_owned).collect()
}

/// Sentences of `text`: a chunk ending in `.`, `?` or `!` ends one (see the module docs).
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for chunk in text.split_whitespace() {
        current.push(chunk);
        if chunk.ends_with(['.', '?', '!']) {
            out.push(current.join(" "));
            current.clear();
        }
    }
    if !current.is_empty() {
        out.push(current.join(" "));
    }
    out
}

/// `nltk.word_tokenize(text)`: [`sentences`], then [`treebank`] on each. Case is kept.
pub fn word_tokenize(text: &str) -> Vec<String> {
    sentences(text).iter().flat_map(|s| treebank(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        assert_eq!(compiled().len(), RULES.len() + MORE_CONTRACTIONS.len());
    }

    #[test]
    fn splits_like_nltk() {
        assert_eq!(
            word_tokenize("A well-maintained road, with 1,000 cars (and trucks). It's 3.5 km long."),
            [
                "A",
                "well-maintained",
                "road",
                ",",
                "with",
                "1,000",
                "cars",
                "(",
                "and",
                "trucks",
                ")",
                ".",
                "It",
                "'s",
                "3.5",
                "km",
                "long",
                "."
            ]
        );
        assert_eq!(word_tokenize("\"Many\" planes aren't parked"), ["``", "Many", "''", "planes", "are", "n't", "parked"]);
        assert_eq!(word_tokenize("gonna see, 50% $20"), ["gon", "na", "see", ",", "50", "%", "$", "20"]);
    }
}

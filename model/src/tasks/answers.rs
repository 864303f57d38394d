//! Answer normalisation for classification and VQA: case, punctuation, articles, whitespace,
//! and plural/singular, so "The Airports." matches the class "airport".

/// Lower-cases, drops punctuation and the articles a/an/the, and collapses whitespace.
pub fn normalize_answer(answer: &str) -> String {
    let cleaned: String =
        answer.chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c.to_lowercase().next().unwrap_or(c) } else { ' ' }).collect();
    cleaned.split_whitespace().filter(|word| !matches!(*word, "a" | "an" | "the")).collect::<Vec<_>>().join(" ")
}

/// A crude singular form of each word: enough for class names ("harbors" → "harbor",
/// "churches" → "church", "industrial areas" → "industrial area").
fn singular(phrase: &str) -> String {
    phrase
        .split(' ')
        .map(|word| {
            if word.len() > 4 && (word.ends_with("ches") || word.ends_with("shes") || word.ends_with("sses") || word.ends_with("xes")) {
                &word[..word.len() - 2]
            } else if word.len() > 3 && word.ends_with('s') && !word.ends_with("ss") {
                &word[..word.len() - 1]
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The index of the candidate class an answer names: an exact match after normalisation, then
/// a singular/plural match, then the one class the answer contains (or that contains the
/// answer). `None` when nothing matches or the answer is ambiguous.
pub fn match_class(answer: &str, classes: &[String]) -> Option<usize> {
    let answer = normalize_answer(answer);
    if answer.is_empty() {
        return None;
    }
    let normalized: Vec<String> = classes.iter().map(|c| normalize_answer(c)).collect();
    if let Some(i) = normalized.iter().position(|c| *c == answer) {
        return Some(i);
    }
    let answer_singular = singular(&answer);
    if let Some(i) = normalized.iter().position(|c| singular(c) == answer_singular) {
        return Some(i);
    }
    let contained: Vec<usize> = normalized
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            let c = singular(c);
            !c.is_empty() && (answer_singular.contains(&c) || c.contains(&answer_singular))
        })
        .map(|(i, _)| i)
        .collect();
    match contained.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn normalisation_drops_case_punctuation_and_articles() {
        assert_eq!(normalize_answer("  The Airport. "), "airport");
        assert_eq!(normalize_answer("Yes!"), "yes");
        assert_eq!(normalize_answer("an\tindustrial-area"), "industrial area");
        assert_eq!(normalize_answer("..."), "");
    }

    #[test]
    fn answers_match_classes_across_forms() {
        let c = classes(&["airport", "bare land", "church", "industrial area", "harbor"]);
        assert_eq!(match_class("Airports", &c), Some(0));
        assert_eq!(match_class("the churches.", &c), Some(2));
        assert_eq!(match_class("Industrial areas", &c), Some(3));
        assert_eq!(match_class("It is a harbor with ships", &c), Some(4));
        assert_eq!(match_class("forest", &c), None);
        assert_eq!(match_class("", &c), None);
        // Two classes contained in the answer: ambiguous, so no match.
        assert_eq!(match_class("airport next to bare land", &c), None);
    }
}

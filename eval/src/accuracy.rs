//! Accuracy for classification and VQA, with the answer rules of [`model::tasks`] (the same
//! ones the inference stage uses): a VQA answer is right when its normalised form
//! ([`normalize_answer`]: the official VQA processing, so "two" = "2", "1,000" = "1000", "Yes." =
//! "yes") equals an accepted answer's; a classification answer counts when the class it names
//! ([`match_class`]: the longest candidate named as whole words, so "airport" is not "port") is
//! the reference. Answers that name no class, or two equally long ones, are parse failures (and
//! wrong).

use std::collections::BTreeMap;

use model::tasks::{match_class, normalize_answer};

/// Correct and total counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Correct answers.
    pub correct: usize,
    /// Questions.
    pub total: usize,
}

impl Tally {
    /// `correct / total` (0 when empty).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    fn add(&mut self, correct: bool) {
        self.total += 1;
        self.correct += usize::from(correct);
    }
}

/// Classification results.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClassificationScore {
    /// Over all images.
    pub overall: Tally,
    /// Per reference class.
    pub per_class: BTreeMap<String, Tally>,
    /// Answers that matched no candidate class (or two equally long ones).
    pub parse_failures: usize,
}

impl ClassificationScore {
    /// Mean of the per-class accuracies (the "averaged across categories" papers report).
    pub fn mean_class_accuracy(&self) -> f64 {
        if self.per_class.is_empty() {
            return 0.0;
        }
        self.per_class.values().map(Tally::accuracy).sum::<f64>() / self.per_class.len() as f64
    }
}

/// Scores `(answer, reference class)` pairs against the candidate `classes`.
pub fn classification<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, classes: &[String]) -> ClassificationScore {
    let mut score = ClassificationScore::default();
    for (answer, reference) in pairs {
        let matched = match_class(answer, classes);
        if matched.is_none() {
            score.parse_failures += 1;
        }
        let correct = matched.is_some_and(|i| normalize_answer(&classes[i]) == normalize_answer(reference));
        score.overall.add(correct);
        score.per_class.entry(reference.to_owned()).or_default().add(correct);
    }
    score
}

/// VQA results.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VqaScore {
    /// Over all questions.
    pub overall: Tally,
    /// Per question type (RSVQA: presence, comparison, count, rural_urban, area).
    pub per_type: BTreeMap<String, Tally>,
}

impl VqaScore {
    /// Mean of the per-type accuracies (RSVQA's "average accuracy").
    pub fn average_accuracy(&self) -> f64 {
        if self.per_type.is_empty() {
            return self.overall.accuracy();
        }
        self.per_type.values().map(Tally::accuracy).sum::<f64>() / self.per_type.len() as f64
    }
}

/// Scores `(answer, accepted answers, question type)`; an answer is right when its normalised
/// form equals any accepted answer's.
pub fn vqa<'a>(items: impl IntoIterator<Item = (&'a str, &'a [String], Option<&'a str>)>) -> VqaScore {
    let mut score = VqaScore::default();
    for (answer, accepted, kind) in items {
        let answer = normalize_answer(answer);
        let correct = accepted.iter().any(|a| normalize_answer(a) == answer);
        score.overall.add(correct);
        if let Some(kind) = kind {
            score.per_type.entry(kind.to_owned()).or_default().add(correct);
        }
    }
    score
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_normalises_and_counts_failures() {
        let classes: Vec<String> = ["airport", "bare land", "parking lot"].iter().map(|s| (*s).to_owned()).collect();
        let score = classification(
            [("The Airport.", "airport"), ("parking lots", "parking lot"), ("a forest", "bare land"), ("airport", "bare land")],
            &classes,
        );
        assert_eq!(score.overall, Tally { correct: 2, total: 4 });
        assert_eq!(score.parse_failures, 1);
        assert_eq!(score.per_class["bare land"], Tally { correct: 0, total: 2 });
        assert!((score.mean_class_accuracy() - (1.0 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn vqa_accepts_any_reference_and_averages_types() {
        let yes = vec!["yes".to_owned()];
        let four = vec!["4".to_owned(), "four".to_owned()];
        let score = vqa([
            ("Yes.", yes.as_slice(), Some("presence")),
            ("four", four.as_slice(), Some("count")),
            ("no", yes.as_slice(), Some("presence")),
        ]);
        assert_eq!(score.overall, Tally { correct: 2, total: 3 });
        assert!((score.average_accuracy() - (0.5 + 1.0) / 2.0).abs() < 1e-12);
    }
}

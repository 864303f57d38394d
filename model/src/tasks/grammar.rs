//! Constrained decoding of box answers: while a detection or grounding answer is generated,
//! only tokens that keep the text a prefix of a well-formed answer may be chosen. The answer
//! language is the one [`super::parse_boxes`] reads and the training data writes:
//!
//! ```text
//! answer := ( box ( " " box )* )?
//! box    := "<box>[" x1 ", " y1 ", " x2 ", " y2 "]</box>"
//! ```
//!
//! with every coordinate an integer on the 0–[`GRID_MAX`] grid without leading zeros, and
//! `x2 > x1`, `y2 > y1`: every box has area, so the top-left corner stops one short of the
//! grid's edge (`x1, y1 ≤ GRID_MAX − 1`), or no bottom-right corner would be left for it. A small model that has half-learnt the format then still answers with
//! boxes that parse (the mask only removes tokens; among the allowed ones the model's own
//! ranking decides), as grammar-constrained generation does in llama.cpp (GBNF) and outlines.
//! Stopping is allowed between boxes only, so an answer is never cut inside one (unless it
//! reaches the token limit).

use super::GRID_MAX;

/// Where the answer is in the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoxState {
    /// Before the first box, after a complete one (`after_box`: a space follows, or the end),
    /// or after the space that separates two boxes (`spaced`: a box follows). The answer may
    /// end anywhere here but after a space.
    Between {
        /// A box was just closed (a space or `<` may follow).
        after_box: bool,
        /// A separating space was written (only `<` may follow).
        spaced: bool,
    },
    /// Inside the literal `<box>[` (`at` characters written).
    Open {
        /// Characters of the literal written so far.
        at: u8,
    },
    /// Writing coordinate `index` (0..4), `digits` written, value `value`; `low` is the value
    /// it must exceed (x1 for x2, y1 for y2).
    Number {
        /// Which coordinate: x1, y1, x2, y2.
        index: u8,
        /// Its digits so far.
        value: u32,
        /// How many digits.
        digits: u8,
        /// x1 and y1, once written.
        corner: [u32; 2],
    },
    /// After a coordinate's `,`, before its space.
    Comma {
        /// The coordinate that comes next.
        next: u8,
        /// x1 and y1, once written.
        corner: [u32; 2],
    },
    /// Inside the literal `]</box>` (`at` characters written).
    Close {
        /// Characters of the literal written so far.
        at: u8,
    },
}

const OPEN: &[u8] = b"<box>[";
const CLOSE: &[u8] = b"]</box>";

impl BoxState {
    /// The state before anything is written.
    pub const START: Self = Self::Between { after_box: false, spaced: false };

    /// Whether the answer may stop here.
    pub fn accepting(&self) -> bool {
        matches!(self, Self::Between { spaced: false, .. })
    }

    /// The state after `text`, or `None` when `text` leaves the grammar.
    pub fn advance_str(self, text: &str) -> Option<Self> {
        text.bytes().try_fold(self, Self::advance)
    }

    /// The state after one character (byte: the grammar is ASCII).
    pub fn advance(self, c: u8) -> Option<Self> {
        match self {
            Self::Between { after_box, spaced } => match c {
                // The first box, or the next one after its separating space.
                b'<' if !after_box || spaced => Some(Self::Open { at: 1 }),
                b' ' if after_box && !spaced => Some(Self::Between { after_box, spaced: true }),
                _ => None,
            },
            Self::Open { at } => {
                if c != OPEN[usize::from(at)] {
                    return None;
                }
                Some(if usize::from(at) + 1 == OPEN.len() {
                    Self::Number { index: 0, value: 0, digits: 0, corner: [0, 0] }
                } else {
                    Self::Open { at: at + 1 }
                })
            }
            Self::Number { index, value, digits, corner } => match c {
                b'0'..=b'9' => {
                    // No leading zeros: "0" is a whole number.
                    if digits > 0 && value == 0 {
                        return None;
                    }
                    let value = value * 10 + u32::from(c - b'0');
                    let next = Self::Number { index, value, digits: digits + 1, corner };
                    next.can_finish_number().then_some(next)
                }
                b',' if digits > 0 && index < 3 && self.number_ok() => {
                    let corner = if index < 2 { with(corner, index, value) } else { corner };
                    Some(Self::Comma { next: index + 1, corner })
                }
                b']' if digits > 0 && index == 3 && self.number_ok() => Some(Self::Close { at: 1 }),
                _ => None,
            },
            Self::Comma { next, corner } => (c == b' ').then_some(Self::Number { index: next, value: 0, digits: 0, corner }),
            Self::Close { at } => {
                if c != CLOSE[usize::from(at)] {
                    return None;
                }
                Some(if usize::from(at) + 1 == CLOSE.len() {
                    Self::Between { after_box: true, spaced: false }
                } else {
                    Self::Close { at: at + 1 }
                })
            }
        }
    }

    /// The smallest value a coordinate may take: above x1 for x2, above y1 for y2.
    fn floor(index: u8, corner: [u32; 2]) -> u32 {
        match index {
            2 => corner[0] + 1,
            3 => corner[1] + 1,
            _ => 0,
        }
    }

    /// The largest value a coordinate may take: x1 and y1 leave room for a corner right of and
    /// below them (a box has area), x2 and y2 reach the grid's edge.
    fn ceiling(index: u8) -> u32 {
        match index {
            0 | 1 => u32::from(GRID_MAX) - 1,
            _ => u32::from(GRID_MAX),
        }
    }

    /// The number as written is a whole valid coordinate.
    fn number_ok(&self) -> bool {
        match *self {
            Self::Number { index, value, corner, .. } => value <= Self::ceiling(index) && value >= Self::floor(index, corner),
            _ => false,
        }
    }

    /// Some continuation of the digits written (none or more digits) is a valid coordinate,
    /// so the grammar never walks into a dead end.
    fn can_finish_number(&self) -> bool {
        let Self::Number { index, value, corner, .. } = *self else { return false };
        let (low, high) = (Self::floor(index, corner), Self::ceiling(index));
        if value == 0 {
            // "0" cannot grow (no leading zeros).
            return low == 0;
        }
        let mut scale = 1u32;
        // Numbers starting with `value`: [value·10^k, value·10^k + 10^k − 1] for k extra digits.
        while value.saturating_mul(scale) <= high {
            let (from, to) = (value * scale, value * scale + (scale - 1));
            if to >= low && from <= high {
                return true;
            }
            scale *= 10;
        }
        false
    }
}

fn with(mut corner: [u32; 2], index: u8, value: u32) -> [u32; 2] {
    corner[usize::from(index)] = value;
    corner
}

/// The tokens that can appear in a box answer, with their text: every token whose text is
/// made only of the grammar's characters. Built once per tokenizer.
#[derive(Debug, Clone, Default)]
pub struct BoxVocabulary {
    tokens: Vec<(i64, String)>,
}

impl BoxVocabulary {
    /// Keeps the `(id, text)` pairs whose text is non-empty and uses only `<box>[]/0-9, `.
    pub fn new(tokens: impl IntoIterator<Item = (i64, String)>) -> Self {
        let allowed = |c: char| c.is_ascii_digit() || "<box>[]/, ".contains(c);
        Self { tokens: tokens.into_iter().filter(|(_, text)| !text.is_empty() && text.chars().all(allowed)).collect() }
    }

    /// Token ids allowed after `state`, and whether the answer may stop there.
    pub fn allowed(&self, state: BoxState) -> (Vec<i64>, bool) {
        let ids = self.tokens.iter().filter(|(_, text)| state.advance_str(text).is_some()).map(|(id, _)| *id).collect();
        (ids, state.accepting())
    }

    /// The text of token `id`, when it can appear in a box answer.
    pub fn text(&self, id: i64) -> Option<&str> {
        self.tokens.iter().find(|(t, _)| *t == id).map(|(_, text)| text.as_str())
    }

    /// Whether no token can write a box (a tokenizer without these characters).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::parse_boxes;

    fn run(text: &str) -> Option<BoxState> {
        BoxState::START.advance_str(text)
    }

    #[test]
    fn well_formed_answers_are_accepted_and_parse() {
        for text in ["", "<box>[0, 0, 1, 1]</box>", "<box>[10, 200, 999, 1000]</box> <box>[5, 6, 7, 8]</box>"] {
            let state = run(text).unwrap_or_else(|| panic!("{text} refused"));
            assert!(state.accepting(), "{text}");
            let parsed = parse_boxes(text);
            assert!(parsed.errors.is_empty(), "{text}: {:?}", parsed.errors);
        }
    }

    #[test]
    fn every_malformed_box_is_refused_where_it_goes_wrong() {
        for bad in [
            "<box>[1001",                   // off the grid
            "<box>[05",                     // leading zero
            "<box>[10, 20, 10",             // x2 must exceed x1: 10 cannot grow into 11..=1000? it can: 100
            "<box>[10,20",                  // ", " is the separator
            "<box>[1, 2, 3]",               // three coordinates
            "<box>[1, 2, 3, 4]</box><box>", // boxes are separated by one space
            "box",
            " <box>",
        ] {
            let refused = run(bad).is_none();
            if bad == "<box>[10, 20, 10" {
                assert!(!refused, "10 can still become 100");
                assert!(run("<box>[10, 20, 10,").is_none(), "x2 = 10 is not right of x1 = 10");
                continue;
            }
            assert!(refused, "{bad} accepted");
        }
        assert!(run("<box>[999, 0, 9").is_none(), "no continuation of 9 exceeds 999 on the grid");
        assert!(run("<box>[1000").is_none(), "x1 = 1000 leaves no x2 to its right");
        assert!(run("<box>[0, 1000").is_none(), "y1 = 1000 leaves no y2 below it");
        assert!(run("<box>[0, 100").is_some(), "y1 = 100 is fine (the 1000 prefix is not a dead end yet)");
        assert!(run("<box>[0, 100,").is_some());
        assert!(run("<box>[999, 0, 1").is_some(), "1000 exceeds 999");
        assert!(run("<box>[1, 2, 3, 4]</box> ").is_some_and(|s| !s.accepting()), "a trailing space waits for a box");
        assert!(run("<box>[1, 2, 3").is_some_and(|s| !s.accepting()), "no stop inside a box");
    }

    /// Every state the grammar reaches from the start can still finish a box with area: walking
    /// all digit sequences of every corner value, no prefix dead-ends (the mask would be lifted
    /// there and the model would write unconstrained text, as `y1 = 1000` once did).
    #[test]
    fn no_accepted_prefix_is_a_dead_end_and_every_box_has_area() {
        let digits = b"0123456789";
        // Any continuation that reaches `]` parses as a box with area.
        for x1 in (0..=1000).step_by(37).chain([999, 1000]) {
            for y1 in [0u32, 1, 500, 998, 999, 1000] {
                let prefix = format!("<box>[{x1}, {y1}, ");
                let Some(state) = run(&prefix) else {
                    assert!(x1 == 1000 || y1 == 1000, "{prefix} refused");
                    continue;
                };
                // Some digit continues x2, and some x2 then allows a y2.
                assert!(digits.iter().any(|&d| state.advance(d).is_some()), "{prefix} is a dead end");
                let x2 = x1 + 1;
                let y2 = y1 + 1;
                let text = format!("{prefix}{x2}, {y2}]</box>");
                assert!(run(&text).is_some_and(|s| s.accepting()), "{text} refused");
                let parsed = parse_boxes(&text);
                assert!(parsed.errors.is_empty() && parsed.boxes.len() == 1, "{text}: {:?}", parsed.errors);
            }
        }
    }

    #[test]
    fn the_vocabulary_allows_exactly_the_tokens_that_continue_the_answer() {
        let vocab = BoxVocabulary::new(
            ["<box>[", "<", "box", ">[", "1", "0", "00", "5", ", ", ",", " ", "]</box>", "]", "</box>", "hello", "", "é"]
                .iter()
                .enumerate()
                .map(|(i, t)| (i as i64, (*t).to_owned())),
        );
        assert_eq!(vocab.text(14), None, "words are not box tokens");
        let (start, stop) = vocab.allowed(BoxState::START);
        assert!(stop, "an answer may be empty");
        assert_eq!(start, vec![0, 1], "`<box>[` or `<`");
        let state = run("<box>[1").unwrap();
        let (after_digit, stop) = vocab.allowed(state);
        assert!(!stop);
        let texts: Vec<&str> = after_digit.iter().map(|id| vocab.text(*id).unwrap()).collect();
        assert_eq!(texts, ["1", "0", "00", "5", ", ", ","]);
    }
}

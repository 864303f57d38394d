//! The tokens pycocoevalcap 1.2 scores: its `PTBTokenizer` runs Stanford CoreNLP 3.4.1's
//! `edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` (Java) on each caption, then
//! drops the tokens in its `PUNCTUATIONS` list. Reproduced here so the COCO protocol needs no
//! Java. The lexer is a hand-written subset of CoreNLP's `PTBLexer` for caption text, checked
//! token for token against the Java tool (`eval/tests/protocols.rs`):
//!
//! - words keep inner hyphens, periods, slashes, colons and commas between digits
//!   (`well-maintained`, `b-52`, `3.5`, `1,000`, `10:30`, `12/05/2020`, `red/white`);
//! - letters of any script are word characters (CoreNLP reads UTF-8 whatever the locale);
//! - contractions split (`it 's`, `do n't`, `ca n't`, `gon na`), single-letter abbreviations
//!   and a few titles keep their period (`u.s.`, `e.g.`, `dr.`), a final period is a token;
//! - brackets become `-lrb-`, `-rrb-`, `-lsb-`, `-rsb-`, `-lcb-`, `-rcb-` (lower-cased by
//!   `-lowerCase`, so pycocoevalcap's upper-case `-LRB-` entries never match them and they are
//!   scored as words — a quirk of the reference, kept);
//! - runs of `!`/`?` are one token (`!!!`, `?!`), kept because only `!` and `?` are listed.

/// pycocoevalcap's `PUNCTUATIONS`: tokens removed after tokenising.
pub const PUNCTUATIONS: [&str; 17] =
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"];

/// Words CoreNLP keeps whole with their period even before a space (a subset of its
/// abbreviation list: the ones captions use).
const ABBREVIATIONS: [&str; 18] =
    ["mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "etc", "vs", "inc", "ltd", "co", "corp", "mt", "ft", "approx", "no"];

/// Split contractions: `(whole word, where it splits)`, the ones CoreNLP's lexer knows.
const SPLIT_WORDS: [(&str, usize); 7] = [("cannot", 3), ("gonna", 3), ("wanna", 3), ("gotta", 3), ("gimme", 3), ("lemme", 3), ("d'ye", 1)];

/// Clitics split off the end of a word, longest first.
const CLITICS: [&str; 7] = ["n't", "'ll", "'re", "'ve", "'s", "'d", "'m"];

fn bracket(c: char) -> Option<&'static str> {
    Some(match c {
        '(' => "-LRB-",
        ')' => "-RRB-",
        '[' => "-LSB-",
        ']' => "-RSB-",
        '{' => "-LCB-",
        '}' => "-RCB-",
        _ => return None,
    })
}

/// Characters that are always tokens of their own, wherever they stand in a chunk.
fn always_split(c: char) -> bool {
    matches!(c, ';' | '*' | '%' | '$' | '#' | '"' | '(' | ')' | '[' | ']' | '{' | '}' | '€' | '£' | '¥')
}

/// Tokens of one whitespace-free chunk, original case.
fn chunk_tokens(chunk: &str, out: &mut Vec<String>) {
    let chars: Vec<char> = chunk.chars().collect();
    // Cut the chunk where a character always stands alone, or at commas that are not between
    // digits, at `?`/`!` runs, at `--` and at `...`.
    let mut pieces: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut i = 0;
    let flush = |word: &mut String, pieces: &mut Vec<String>| {
        if !word.is_empty() {
            pieces.push(std::mem::take(word));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let digit_around = |k: usize| k > 0 && chars[k - 1].is_ascii_digit() && chars.get(k + 1).is_some_and(|n| n.is_ascii_digit());
        if always_split(c) {
            flush(&mut word, &mut pieces);
            pieces.push(bracket(c).map_or_else(|| if c == '"' { quote(&pieces, i) } else { c.to_string() }, str::to_owned));
            i += 1;
        } else if c == ',' && !digit_around(i) {
            flush(&mut word, &mut pieces);
            pieces.push(",".into());
            i += 1;
        } else if c == ':' && !(digit_around(i) || chars.get(i + 1).is_some_and(|n| *n == '/')) {
            flush(&mut word, &mut pieces);
            pieces.push(":".into());
            i += 1;
        } else if c == '?' || c == '!' {
            flush(&mut word, &mut pieces);
            let start = i;
            while i < chars.len() && (chars[i] == '?' || chars[i] == '!') {
                i += 1;
            }
            pieces.push(chars[start..i].iter().collect());
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            flush(&mut word, &mut pieces);
            let start = i;
            while i < chars.len() && chars[i] == '-' {
                i += 1;
            }
            pieces.push(chars[start..i].iter().collect());
        } else if c == '.' && chars.get(i + 1) == Some(&'.') {
            flush(&mut word, &mut pieces);
            let start = i;
            while i < chars.len() && chars[i] == '.' {
                i += 1;
            }
            pieces.push(chars[start..i].iter().collect());
        } else if c == '…' {
            flush(&mut word, &mut pieces);
            pieces.push("...".into());
            i += 1;
        } else {
            word.push(c);
            i += 1;
        }
    }
    flush(&mut word, &mut pieces);
    let last = pieces.len().saturating_sub(1);
    for (k, piece) in pieces.into_iter().enumerate() {
        let is_word = piece.chars().any(char::is_alphanumeric);
        if is_word {
            word_tokens(&piece, k == last, out);
        } else {
            out.push(piece);
        }
    }
}

/// An ASCII double quote: opening (``) at the start of a chunk or after an opening bracket,
/// closing ('') otherwise. Both are in [`PUNCTUATIONS`], so only the split matters for scores.
fn quote(pieces: &[String], i: usize) -> String {
    let opening = i == 0 || pieces.last().is_some_and(|p| p.starts_with("-L"));
    if opening { "``" } else { "''" }.to_owned()
}

/// Tokens of a piece that holds letters or digits: quotes and clitics peeled, a final period
/// split unless the piece is an abbreviation.
fn word_tokens(piece: &str, chunk_end: bool, out: &mut Vec<String>) {
    let mut rest = piece;
    // Opening single quotes and backquotes.
    while let Some(stripped) = rest.strip_prefix('`') {
        out.push("`".into());
        rest = stripped;
    }
    if rest.starts_with('\'') && !CLITICS.iter().any(|c| rest.to_lowercase() == *c) && rest.chars().nth(1).is_some_and(char::is_alphabetic)
    {
        out.push("`".into());
        rest = &rest[1..];
    }
    // Closing quotes, then a final period.
    let mut tail: Vec<String> = Vec::new();
    loop {
        if let Some(stripped) = rest.strip_suffix('\'') {
            // `boats'` (a plural possessive) and a closing quote are both a separate `'`.
            tail.push("'".into());
            rest = stripped;
        } else if let Some(stripped) = rest.strip_suffix('`') {
            tail.push("`".into());
            rest = stripped;
        } else {
            break;
        }
    }
    if chunk_end || !tail.is_empty() {
        if let Some(stripped) = rest.strip_suffix('.') {
            if !stripped.is_empty() && !is_abbreviation(rest) {
                tail.push(".".into());
                rest = stripped;
            }
        }
    }
    let lower = rest.to_lowercase();
    if let Some((_, at)) = SPLIT_WORDS.iter().find(|(w, _)| *w == lower) {
        let split = rest.char_indices().nth(*at).map_or(rest.len(), |(b, _)| b);
        out.push(rest[..split].to_owned());
        out.push(rest[split..].to_owned());
    } else if let Some(clitic) = CLITICS.iter().find(|c| lower.ends_with(*c) && lower.len() > c.len()) {
        let split = rest.len() - clitic.len();
        out.push(rest[..split].to_owned());
        out.push(rest[split..].to_owned());
    } else if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out.extend(tail.into_iter().rev());
}

/// `u.s.`, `e.g.`, `a.m.` (letters each followed by a period) and the titles in
/// [`ABBREVIATIONS`].
fn is_abbreviation(word: &str) -> bool {
    let lower = word.to_lowercase();
    let letters_and_dots = lower.chars().collect::<Vec<_>>();
    let dotted =
        letters_and_dots.len() >= 2 && letters_and_dots.chunks(2).all(|pair| pair.len() == 2 && pair[0].is_alphabetic() && pair[1] == '.');
    dotted || lower.strip_suffix('.').is_some_and(|w| ABBREVIATIONS.contains(&w))
}

/// CoreNLP's PTB tokens of one line, lower-cased (`-lowerCase`), punctuation kept.
pub fn ptb_tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in line.split_whitespace() {
        chunk_tokens(chunk, &mut out);
    }
    out.into_iter().map(|t| t.to_lowercase()).collect()
}

/// The tokens pycocoevalcap scores for a caption: [`ptb_tokens`] without the
/// [`PUNCTUATIONS`] tokens. Newlines inside a caption are spaces, as pycocoevalcap makes them.
pub fn tokenize(caption: &str) -> Vec<String> {
    ptb_tokens(&caption.replace('\n', " ")).into_iter().filter(|t| !PUNCTUATIONS.contains(&t.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_hyphenated_words_and_drops_punctuation() {
        assert_eq!(
            tokenize("A well-maintained road, with 1,000 cars near the U.S. border; it's 3.5 km long."),
            ["a", "well-maintained", "road", "with", "1,000", "cars", "near", "the", "u.s.", "border", "it", "'s", "3.5", "km", "long"]
        );
        assert_eq!(ptb_tokens("(and trucks) what?!"), ["-lrb-", "and", "trucks", "-rrb-", "what", "?!"]);
        assert_eq!(tokenize("I can't see -- gonna go."), ["i", "ca", "n't", "see", "gon", "na", "go"]);
        assert_eq!(tokenize("много белых самолётов."), ["много", "белых", "самолётов"]);
    }
}

//! The part of WordNet 3.0 that METEOR's synonym stage uses, read from the standard database
//! files (`index.*`, `data.*`, `*.exc`) and looked up exactly as NLTK's `WordNetCorpusReader`
//! does (nltk 3.9.2): `synsets(word)` = for each part of speech, the lemma forms found by
//! `_morphy` (exception list, else one round of suffix rules, plus the word itself), their
//! synsets, and the synsets' lemma names.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::EvalError;

const PARTS: [(&str, char); 4] = [("noun", 'n'), ("verb", 'v'), ("adj", 'a'), ("adv", 'r')];

fn substitutions(pos: char) -> &'static [(&'static str, &'static str)] {
    match pos {
        'n' => &[
            ("s", ""),
            ("ses", "s"),
            ("ves", "f"),
            ("xes", "x"),
            ("zes", "z"),
            ("ches", "ch"),
            ("shes", "sh"),
            ("men", "man"),
            ("ies", "y"),
        ],
        'v' => &[("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
        'a' => &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
        _ => &[],
    }
}

/// An in-memory WordNet: lemma → synset offsets per part of speech, exceptions, and the lemma
/// names of every synset.
#[derive(Debug, Default)]
pub struct WordNet {
    index: HashMap<(char, String), Vec<u64>>,
    exceptions: HashMap<(char, String), Vec<String>>,
    lemma_names: HashMap<(char, u64), Vec<String>>,
}

fn read(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|e| EvalError::Input { path: path.to_owned(), reason: format!("cannot read: {e}") })
}

impl WordNet {
    /// Loads a WordNet 3.0 `dict` directory.
    ///
    /// # Errors
    /// [`EvalError::Input`] naming the file that is missing or malformed.
    pub fn load(dir: &Path) -> Result<Self, EvalError> {
        let mut wordnet = Self::default();
        for (suffix, pos) in PARTS {
            let index_path = dir.join(format!("index.{suffix}"));
            for line in read(&index_path)?.lines().filter(|l| !l.starts_with(' ')) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let malformed = || EvalError::Input { path: index_path.clone(), reason: format!("malformed line `{line}`") };
                let synsets: usize = fields.get(2).and_then(|f| f.parse().ok()).ok_or_else(malformed)?;
                let pointers: usize = fields.get(3).and_then(|f| f.parse().ok()).ok_or_else(malformed)?;
                let first = 4 + pointers + 2;
                let offsets: Vec<u64> =
                    fields.get(first..first + synsets).ok_or_else(malformed)?.iter().filter_map(|o| o.parse().ok()).collect();
                wordnet.index.insert((pos, fields[0].to_owned()), offsets);
            }
            let exc_path = dir.join(format!("{suffix}.exc"));
            for line in read(&exc_path)?.lines() {
                let mut terms = line.split_whitespace();
                if let Some(form) = terms.next() {
                    wordnet.exceptions.insert((pos, form.to_owned()), terms.map(str::to_owned).collect());
                }
            }
            let data_path = dir.join(format!("data.{suffix}"));
            for line in read(&data_path)?.lines().filter(|l| !l.starts_with(' ')) {
                let fields: Vec<&str> = line.split('|').next().unwrap_or("").split_whitespace().collect();
                let (Some(offset), Some(count)) =
                    (fields.first().and_then(|o| o.parse().ok()), fields.get(3).and_then(|c| u64::from_str_radix(c, 16).ok()))
                else {
                    return Err(EvalError::Input {
                        path: data_path.clone(),
                        reason: format!("malformed line `{}`", &line[..line.len().min(60)]),
                    });
                };
                let names = (0..count as usize)
                    .filter_map(|i| fields.get(4 + 2 * i))
                    // Adjective markers like `(a)` or `(ip)` are not part of the name.
                    .map(|name| name.split_once('(').map_or(*name, |(base, _)| base).to_owned())
                    .collect();
                wordnet.lemma_names.insert((pos, offset), names);
            }
        }
        Ok(wordnet)
    }

    /// The default location under the asset cache (`scripts/setup.sh` puts it there).
    pub fn default_dir() -> PathBuf {
        crate::assets_dir().join("wordnet-3.0")
    }

    fn morphy(&self, form: &str, pos: char) -> Vec<String> {
        let forms: Vec<String> = match self.exceptions.get(&(pos, form.to_owned())) {
            Some(exceptions) => exceptions.clone(),
            None => substitutions(pos)
                .iter()
                .filter(|(old, _)| form.ends_with(old))
                .map(|(old, new)| format!("{}{new}", &form[..form.len() - old.len()]))
                .collect(),
        };
        let mut seen = HashSet::new();
        std::iter::once(form.to_owned())
            .chain(forms)
            .filter(|f| self.index.contains_key(&(pos, f.clone())) && seen.insert(f.clone()))
            .collect()
    }

    /// The lemma names of every synset of `word` (any part of speech), as NLTK's
    /// `[l.name() for s in wordnet.synsets(word) for l in s.lemmas()]` gives them.
    pub fn synonyms(&self, word: &str) -> HashSet<String> {
        let word = word.to_lowercase();
        let mut names = HashSet::new();
        for (_, pos) in PARTS {
            for form in self.morphy(&word, pos) {
                for offset in self.index.get(&(pos, form)).into_iter().flatten() {
                    names.extend(self.lemma_names.get(&(pos, *offset)).into_iter().flatten().cloned());
                }
            }
        }
        names
    }
}

//! Training samples: LLaVA-style JSONL (`id`, `image`, `conversations` of `{from: human|gpt,
//! value}`) or, for the retriever, plain `{"image", "text"}` pairs. The first human/gpt pair
//! of each record is one sample, `<image>` markers dropped. Files in an object store are
//! mirrored locally first ([`crate::remote`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::remote;

/// One training sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The image file.
    pub image: PathBuf,
    /// The instruction, `<image>` markers dropped (empty for an image–text pair).
    pub query: String,
    /// The answer the model is taught (or the text of an image–text pair).
    pub response: String,
    /// The file and line it came from, for errors found later (an unreadable image).
    pub origin: String,
}

/// A JSONL record: a LLaVA conversation, or (for the retriever) a plain image–text pair.
#[derive(Deserialize)]
struct Record {
    image: String,
    #[serde(default)]
    conversations: Option<Vec<Turn>>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Turn {
    from: String,
    value: String,
}

/// Which records a job takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// LLaVA conversations only (`train align`, `train instruct`).
    Conversations,
    /// Conversations (the first answer is the text) or `{"image", "text"}` pairs.
    Pairs,
}

/// Joins a path of a training file to the file's folder; object-store URLs stay as they are.
pub fn beside(base: &Path, path: &Path) -> PathBuf {
    if remote::is_remote(path) {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// Reads the training and held-out samples. Object-store locations (`s3://…`) are mirrored
/// locally first, with the images they name (see [`remote`]).
///
/// # Errors
/// As [`read_samples`] and [`remote::stage`]; a local JSONL with images in an object store.
pub fn read_data(
    data: &Path,
    held_out: Option<&Path>,
    image_root: Option<&Path>,
    records: Records,
) -> anyhow::Result<(Vec<Sample>, Option<Vec<Sample>>)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the I/O runtime")?;
    let read = |path: &Path| -> anyhow::Result<Vec<Sample>> {
        if remote::is_remote(path) {
            let (local, root) = remote::stage(&runtime, path, image_root)?;
            read_samples(&local, root.as_deref(), records)
        } else if let Some(root) = image_root.filter(|r| remote::is_remote(r)) {
            bail!(
                "`{}` is a local file but image_root `{}` is in an object store\nhint: put the JSONL in the store too, and name it by its URL",
                path.display(),
                root.display()
            )
        } else {
            read_samples(path, image_root, records)
        }
    };
    // Which setting named the file goes into the error: the same JSONL could be either.
    let samples = read(data).context("reading the training data (`data`)")?;
    let held_out = held_out.map(read).transpose().context("reading the held-out data (`held_out`)")?;
    Ok((samples, held_out))
}

/// Reads LLaVA-style JSONL (or image–text pairs, with [`Records::Pairs`]). Images are found
/// under `image_root` when given, else beside the JSONL, or one folder up (the layout `strata
/// data synth` writes).
///
/// # Errors
/// A malformed line or a missing image, named with the file and line; a file with no samples.
pub fn read_samples(path: &Path, image_root: Option<&Path>, records: Records) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading `{}`", path.display()))?;
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut samples = Vec::new();
    let mut root: Option<PathBuf> = image_root.map(Path::to_owned);
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("`{}` line {}", path.display(), number + 1);
        let record: Record = serde_json::from_str(line).with_context(at)?;
        let (query, response) = match (&record.conversations, &record.text, records) {
            (Some(turns), _, _) => {
                let human = turns.iter().position(|t| t.from == "human").with_context(|| format!("{}: no human turn", at()))?;
                let gpt = turns
                    .get(human + 1)
                    .filter(|t| t.from == "gpt")
                    .with_context(|| format!("{}: no gpt turn after the human one", at()))?;
                (turns[human].value.replace("<image>\n", "").replace("<image>", "").trim().to_owned(), gpt.value.trim().to_owned())
            }
            (None, Some(text), Records::Pairs) => (String::new(), text.trim().to_owned()),
            (None, Some(_), Records::Conversations) => {
                bail!("{}: an image–text pair (`text`), which `strata train retriever` takes; this stage needs `conversations`", at())
            }
            (None, None, _) => bail!("{}: neither `conversations` nor `text`", at()),
        };
        let root = root.get_or_insert_with(|| {
            if folder.join(&record.image).exists() {
                folder.to_owned()
            } else {
                folder.parent().unwrap_or(folder).to_owned()
            }
        });
        let image = root.join(&record.image);
        if !image.exists() {
            bail!("{}: image `{}` does not exist\nhint: set image_root in the training file", at(), image.display());
        }
        samples.push(Sample { image, query, response, origin: at() });
    }
    if samples.is_empty() {
        bail!("`{}` holds no samples", path.display());
    }
    Ok(samples)
}

/// Says so when a batch is larger than the training set: [`crate::sampler::batch_indices`] then
/// repeats samples within a batch, which a user who meant a larger data set should hear before
/// minutes of work.
pub fn warn_small_data(samples: usize, batch_size: usize, data: &Path) {
    if samples < batch_size {
        let what = if samples == 1 { "the one training sample".to_owned() } else { format!("the {samples} training samples") };
        eprintln!(
            "warning: batch_size {batch_size} is larger than {what} in `{}`; every batch repeats samples\nhint: lower batch_size, or check that `data` names the whole training set",
            data.display()
        );
    }
}

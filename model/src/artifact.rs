//! Model artifacts (MODEL_SPEC §7): a directory with `config.json`, `tokenizer.json`, one or
//! more `*.safetensors` and `manifest.json` holding the version, its parent, the training run
//! and the sha256 of every file. Opening an artifact re-hashes every file and refuses any
//! mismatch, missing file or unlisted weights, so a worker never serves half-copied or
//! tampered weights.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind};

use crate::config::StrataConfig;
use crate::layers::ParamInit;
use crate::vlm::StrataModel;
use crate::weights::{self, LoadPolicy};
use crate::ModelError;

/// The `format` value of every manifest.
pub const MANIFEST_FORMAT: &str = "strata-model/1";
const WEIGHTS_FILE: &str = "model.safetensors";

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// This model's version.
    pub version: String,
    /// The version it was trained from, if any.
    #[serde(default)]
    pub parent_version: Option<String>,
    /// The training run that produced it, if any.
    #[serde(default)]
    pub training_run: Option<String>,
    /// File name (relative to the directory) → lowercase hex sha256.
    pub files: BTreeMap<String, String>,
}

/// Provenance recorded when saving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// Version of the new artifact.
    pub version: String,
    /// Version it derives from.
    pub parent_version: Option<String>,
    /// Training run id.
    pub training_run: Option<String>,
}

fn artifact_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Artifact { path: path.to_owned(), reason: reason.into() }
}

/// Streams a file through sha256.
///
/// # Errors
/// [`ModelError::Artifact`] when it cannot be read.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut file = std::fs::File::open(path).map_err(|e| artifact_error(path, format!("cannot read: {e}")))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| artifact_error(path, format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A verified artifact directory.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its parsed config.
    pub config: StrataConfig,
}

impl Artifact {
    /// Reads the manifest and checks every file against it.
    ///
    /// # Errors
    /// [`ModelError::Artifact`] for a missing or malformed manifest, a listed file that is
    /// missing or whose sha256 differs, a required file not listed, or weights in the
    /// directory the manifest does not list; [`ModelError::Config`] for a bad config.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let manifest_path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| artifact_error(&manifest_path, format!("cannot read the manifest ({e}); is this a Strata model directory?")))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| artifact_error(&manifest_path, format!("malformed manifest: {e}")))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(artifact_error(&manifest_path, format!("format `{}` is not `{MANIFEST_FORMAT}`", manifest.format)));
        }
        for required in ["config.json", "tokenizer.json"] {
            if !manifest.files.contains_key(required) {
                return Err(artifact_error(&manifest_path, format!("`{required}` is not listed")));
            }
        }
        if !manifest.files.keys().any(|f| f.ends_with(".safetensors")) {
            return Err(artifact_error(&manifest_path, "no `*.safetensors` file is listed"));
        }
        for (name, expected) in &manifest.files {
            let relative = Path::new(name);
            if relative.is_absolute() || relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(artifact_error(&manifest_path, format!("`{name}` is not a plain relative path")));
            }
            let path = dir.join(relative);
            if !path.is_file() {
                return Err(artifact_error(&path, "listed in the manifest but missing"));
            }
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(artifact_error(&path, format!("sha256 {actual} does not match the manifest's {expected}; refusing to load")));
            }
        }
        let entries = std::fs::read_dir(dir).map_err(|e| artifact_error(dir, format!("cannot list: {e}")))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors") && !manifest.files.contains_key(&name) {
                return Err(artifact_error(&entry.path(), "weights not listed in the manifest; refusing to load"));
            }
        }
        let config = StrataConfig::from_json(
            &std::fs::read_to_string(dir.join("config.json")).map_err(|e| artifact_error(&dir.join("config.json"), e.to_string()))?,
        )?;
        Ok(Self { dir: dir.to_owned(), manifest, config })
    }

    /// The weight files, in manifest order.
    pub fn weight_files(&self) -> Vec<PathBuf> {
        self.manifest.files.keys().filter(|f| f.ends_with(".safetensors")).map(|f| self.dir.join(f)).collect()
    }

    /// Builds the model on `device` in `kind` and loads every weight.
    ///
    /// # Errors
    /// [`ModelError::Weights`] when the weights do not cover the model exactly; tokenizer and
    /// config errors as their loaders say.
    pub fn load(&self, device: Device, kind: Kind) -> Result<StrataModel, ModelError> {
        let tokenizer = StrataModel::tokenizer_from_dir(&self.dir, &self.config)?;
        let model = StrataModel::new(self.config.clone(), tokenizer, device, kind, ParamInit::Uninitialized)?;
        weights::load(model.var_store(), &self.weight_files(), LoadPolicy::Complete)?;
        Ok(model)
    }

    /// Loads the model for inference on `device`, its weights in the type the device's
    /// precision gives for this model's width ([`crate::device::SelectedDevice::dtype_for`]):
    /// the artifact's f32 weights are cast as they load.
    ///
    /// # Errors
    /// As [`Artifact::load`].
    pub fn load_for_inference(&self, device: &crate::device::SelectedDevice) -> Result<StrataModel, ModelError> {
        let kind = device.dtype_for(self.config.llm.hidden_size);
        tracing::info!(
            model = %self.manifest.version,
            device = %device.describe(),
            precision = %device.precision(),
            weights = %crate::device::kind_name(kind),
            "Loading the model for inference."
        );
        self.load(device.device(), kind)
    }
}

/// Saves `model` as an artifact in `dir` (created if needed): config, tokenizer (copied from
/// `tokenizer_json`), all weights in `model.safetensors`, then the manifest last, so a reader
/// never sees a manifest before the files it lists.
///
/// # Errors
/// [`ModelError::Artifact`] / [`ModelError::Weights`] when a file cannot be written.
pub fn save(model: &StrataModel, tokenizer_json: &Path, dir: &Path, provenance: &Provenance) -> Result<Manifest, ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| artifact_error(dir, format!("cannot create: {e}")))?;
    let write =
        |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).map_err(|e| artifact_error(&dir.join(name), e.to_string()));
    write("config.json", model.config().to_json().as_bytes())?;
    let tokenizer = std::fs::read(tokenizer_json).map_err(|e| artifact_error(tokenizer_json, e.to_string()))?;
    write("tokenizer.json", &tokenizer)?;
    weights::save(model.var_store(), &dir.join(WEIGHTS_FILE), |_| true)?;
    let mut files = BTreeMap::new();
    for name in ["config.json", "tokenizer.json", WEIGHTS_FILE] {
        files.insert(name.to_owned(), sha256_file(&dir.join(name))?);
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        version: provenance.version.clone(),
        parent_version: provenance.parent_version.clone(),
        training_run: provenance.training_run.clone(),
        files,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| artifact_error(dir, e.to_string()))?;
    let staged = dir.join("manifest.json.partial");
    std::fs::write(&staged, text).map_err(|e| artifact_error(&staged, e.to_string()))?;
    std::fs::rename(&staged, dir.join("manifest.json")).map_err(|e| artifact_error(dir, e.to_string()))?;
    Ok(manifest)
}

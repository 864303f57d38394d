//! The chain builder: the one place where validated settings become the stages
//! tile → infer → merge → sink (as vector's topology builder does for its components). Both
//! runtimes take what it returns: the embedded one ([`crate::runtime::run`], `strata batch`)
//! runs every stage in one process, the Kafka one (`strata serve --role`) runs the roles it is
//! given between topics. So the model-source rules, the tiler's settings and the loading of
//! models and indexes are the same in both.

use std::sync::Arc;

use model::device::{DevicePreference, Precision};
use retrieval::{RetrievalOptions, Retriever};
use schemas::{ResultMessage, Stage as StageName, TileMessage};
use storage::{registry::Registry, Location};

use crate::{
    runtime::{Chain, Then},
    stage::{Collector, Envelope, Stage, StageError},
    stages::{
        infer::{InferConfig, InferStage, LoadedModel, TileModel as _, TilesOnly},
        merge::{MergeConfig, MergeStage},
        sink::SinkStage,
        tile::TileStage,
    },
    tile::{Progress, TilerConfig},
    OperatorError,
};
use tables::Tables;

/// Where the inference stage's model comes from. The same rule everywhere: one source or
/// none, never two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// No model: tiles pass through unanswered (tiling and footprints only).
    None,
    /// A model artifact: a folder, or the URL it was pushed to (fetched once into the cache).
    Artifact(String),
    /// The version a model registry serves (`serving.json` under the URL).
    Registry(String),
}

impl ModelSource {
    /// The source the `--model` and `--model-registry` settings name.
    ///
    /// # Errors
    /// [`OperatorError::Settings`] when both are given.
    pub fn from_settings(model: Option<&str>, registry: Option<&str>) -> Result<Self, OperatorError> {
        match (model, registry) {
            (Some(_), Some(_)) => Err(OperatorError::Settings { reason: "give --model or --model-registry, not both".to_owned() }),
            (Some(location), None) => Ok(Self::Artifact(location.to_owned())),
            (None, Some(url)) => Ok(Self::Registry(url.to_owned())),
            (None, None) => Ok(Self::None),
        }
    }

    /// Whether a model answers tasks.
    pub fn is_some(&self) -> bool {
        !matches!(self, Self::None)
    }
}

/// Loads the version `registry` serves now.
///
/// # Errors
/// [`OperatorError::Registry`] when no version serves yet (with what to do); as
/// [`load_version`].
pub async fn load_serving(registry: &Registry, device: DevicePreference, precision: Precision) -> Result<LoadedModel, OperatorError> {
    let Some(serving) = registry.serving().await? else {
        let url = registry.url();
        // A mistyped URL and an empty registry read alike: say which it is.
        let reason = if registry.list().await?.is_empty() {
            format!("it holds no published version (is the URL right?)\nhint: strata model publish DIR --to {url} --promote")
        } else {
            format!(
                "no version serves yet\nhint: strata model promote VERSION --registry {url} (`strata model list --registry {url}` shows the versions)"
            )
        };
        return Err(OperatorError::Registry { registry: url, reason });
    };
    load_version(registry, &serving.version, device, precision).await
}

/// Fetches, verifies and loads one published version of `registry`.
///
/// # Errors
/// When the version is not published, does not verify, or does not load.
pub async fn load_version(
    registry: &Registry,
    version: &str,
    device: DevicePreference,
    precision: Precision,
) -> Result<LoadedModel, OperatorError> {
    let dir = registry.fetch(version).await?;
    let location = dir.to_str().ok_or_else(|| OperatorError::InvalidLocation {
        location: dir.display().to_string(),
        reason: "the model cache path is not UTF-8".to_owned(),
    })?;
    LoadedModel::load(location, device, precision).await
}

/// The inference role: the model, or tiles passed through unanswered when there is none.
pub enum Inference {
    /// Retrieval and the model answer every task of every tile.
    Model(InferStage<LoadedModel>),
    /// No model: tiles become results without answers.
    TilesOnly(TilesOnly),
}

impl Inference {
    /// Checks that every task fits the model ([`InferStage::check_tasks`]); without a model
    /// there is nothing to check.
    ///
    /// # Errors
    /// The first task that does not fit, and why.
    pub fn check_tasks(&self, tasks: &[schemas::TaskSpec]) -> Result<(), OperatorError> {
        match self {
            Self::Model(stage) => stage.check_tasks(tasks),
            Self::TilesOnly(_) => Ok(()),
        }
    }

    /// The model version results are tagged with, when a model answers.
    pub fn version(&self) -> Option<&str> {
        match self {
            Self::Model(stage) => Some(stage.version()),
            Self::TilesOnly(_) => None,
        }
    }

    /// Switches to each model arriving on `updates` between micro-batches
    /// ([`InferStage::with_updates`]); without a model there is nothing to switch.
    #[must_use]
    pub fn with_updates(self, updates: tokio::sync::mpsc::Receiver<LoadedModel>) -> Self {
        match self {
            Self::Model(stage) => Self::Model(stage.with_updates(updates)),
            other => other,
        }
    }
}

impl Stage for Inference {
    type In = TileMessage;
    type Out = ResultMessage;

    fn name(&self) -> StageName {
        StageName::Infer
    }

    async fn process(&mut self, input: Envelope<TileMessage>, out: &mut Collector<ResultMessage>) -> Result<(), StageError> {
        match self {
            Self::Model(stage) => stage.process(input, out).await,
            Self::TilesOnly(stage) => stage.process(input, out).await,
        }
    }

    async fn on_start(&mut self) -> Result<(), StageError> {
        match self {
            Self::Model(stage) => stage.on_start().await,
            Self::TilesOnly(stage) => stage.on_start().await,
        }
    }

    async fn flush(&mut self, out: &mut Collector<ResultMessage>) -> Result<(), StageError> {
        match self {
            Self::Model(stage) => stage.flush(out).await,
            Self::TilesOnly(stage) => stage.flush(out).await,
        }
    }

    async fn on_close(&mut self) -> Result<(), StageError> {
        match self {
            Self::Model(stage) => stage.on_close().await,
            Self::TilesOnly(stage) => stage.on_close().await,
        }
    }

    fn max_wait(&self) -> Option<std::time::Duration> {
        match self {
            Self::Model(stage) => stage.max_wait(),
            Self::TilesOnly(stage) => stage.max_wait(),
        }
    }
}

/// Everything the stages are built from, validated (each runtime type owns its defaults:
/// [`TilerConfig`], [`MergeConfig`], [`InferConfig`]).
pub struct ChainSettings {
    /// Where tile images are written.
    pub tiles: Location,
    /// The result tables.
    pub tables: Tables,
    /// How scenes are tiled.
    pub tiler: TilerConfig,
    /// Tile workers (scenes tiled at once).
    pub tile_workers: usize,
    /// Told of every planned and written tile window (progress bars; may do nothing).
    pub progress: Progress,
    /// Cross-tile NMS.
    pub merge: MergeConfig,
    /// Micro-batches and generation.
    pub infer: InferConfig,
    /// The model.
    pub model: ModelSource,
    /// The index the prompter's descriptions come from (`index: None`: no retrieval).
    pub retrieval: RetrievalOptions,
    /// Where the model and the query encoder run.
    pub device: DevicePreference,
    /// The type the model's weights are loaded in ([`Precision::inference_kind`]).
    pub precision: Precision,
    /// Attempts per input for retryable failures, the first included: the runtime's, handed
    /// to the sink inside the merge role too ([`Then`]).
    pub max_attempts: u32,
}

/// The merge role's stage: cross-tile merge, then the sink's two-phase commit, as one.
pub type MergeAndSink = Then<MergeStage, SinkStage>;

/// Which roles a process runs (the embedded runtime runs all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Scenes → tiles.
    pub tile: bool,
    /// Tiles → results.
    pub infer: bool,
    /// Results → merged scenes → tables.
    pub merge: bool,
}

impl Roles {
    /// Every role, in one process.
    pub const ALL: Self = Self { tile: true, infer: true, merge: true };
}

/// The stages of the roles asked for (`None` for the others), and where the model came from.
pub struct BuiltChain {
    /// Tile workers (empty without the tile role).
    pub tile: Vec<TileStage>,
    /// Inference.
    pub infer: Option<Inference>,
    /// Merge followed by the sink (the merge role commits what it merges).
    pub merge: Option<MergeAndSink>,
    /// The registry the model came from and the version it serves, for a runtime that follows
    /// the registry's later promotions.
    pub serving: Option<(Registry, String)>,
}

impl BuiltChain {
    /// The whole chain, for the embedded runtime.
    ///
    /// # Errors
    /// [`OperatorError::Internal`] when it was built without every role.
    pub fn into_embedded(self) -> Result<Chain<TileStage, Inference, MergeAndSink>, OperatorError> {
        match (self.tile.is_empty(), self.infer, self.merge) {
            (false, Some(infer), Some(merge)) => Ok(Chain { tile: self.tile, infer, merge }),
            _ => Err(OperatorError::Internal { reason: "the embedded runtime needs a chain built with every role".to_owned() }),
        }
    }
}

/// Builds the stages of `roles` from `settings`. The model and the index load first, so a
/// wrong path fails before any scene is read.
///
/// # Errors
/// Retrieval without a model (for the infer role); a model, registry or index that cannot be
/// loaded.
pub async fn build(settings: &ChainSettings, roles: Roles) -> Result<BuiltChain, OperatorError> {
    // Only where inference runs: a tile or merge worker sharing a deployment's settings has no
    // use for the index, and no model to feed it to.
    if roles.infer && !settings.model.is_some() && settings.retrieval.index.is_some() {
        return Err(OperatorError::Settings { reason: "--index needs --model: retrieval feeds the model's prompter".to_owned() });
    }
    let mut serving = None;
    let infer = if roles.infer {
        let model = match &settings.model {
            ModelSource::None => None,
            ModelSource::Artifact(location) => Some(LoadedModel::load(location, settings.device, settings.precision).await?),
            ModelSource::Registry(url) => {
                let registry = Registry::new(storage::resolve(url)?);
                let model = load_serving(&registry, settings.device, settings.precision).await?;
                serving = Some((registry, model.version().to_owned()));
                Some(model)
            }
        };
        Some(match model {
            Some(model) => {
                let retriever = Retriever::open(&settings.retrieval, model.top_k(), model.device())
                    .await
                    .map_err(|source| OperatorError::Retrieval { action: "opening --index".to_owned(), source })?;
                Inference::Model(InferStage::new(model, retriever, settings.infer.clone()))
            }
            None => Inference::TilesOnly(TilesOnly),
        })
    } else {
        None
    };
    let tile = if roles.tile {
        (0..settings.tile_workers.max(1))
            .map(|_| TileStage::new(settings.tiles.clone(), settings.tiler.clone(), Arc::clone(&settings.progress)))
            .collect()
    } else {
        Vec::new()
    };
    let merge = roles.merge.then(|| {
        // The sink owns its commits' retries; the same budget as the runtime's.
        // Scenes share commits (64 at most, 1 s for the oldest): small scenes would otherwise
        // make a Delta transaction per table each.
        let sink = SinkStage::new(settings.tables.clone(), 64).with_max_attempts(settings.max_attempts);
        Then::new(MergeStage::new(settings.merge), sink, settings.max_attempts.max(1))
    });
    Ok(BuiltChain { tile, infer, merge, serving })
}

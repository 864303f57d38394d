//! Command-line surface. Every subcommand's help says what it does, with an example.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

/// Strata: a streaming Earth-observation pipeline.
///
/// Scenes go in (GeoTIFF/COG, JPEG 2000, STAC items — from local folders or any object
/// store); georeferenced tiles, captions, scene classes, VQA answers and detections come out as
/// GeoParquet tables.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, long_about, propagate_version = true)]
#[command(after_help = "Logs: -v/-vv/-vvv, or STRATA_LOG=strata=debug (tracing filter syntax).\n\
Exit status: 0 success, 1 some inputs failed, 2 the command could not run.")]
pub struct Cli {
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log lines on stderr as text, or as one JSON object per line (for log collectors).
    #[arg(long, global = true, value_enum, env = "STRATA_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the span fields (scene, tile) of each event.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run scenes through the whole chain with no broker: tile, retrieve, answer every task on
    /// every tile, merge detections across tiles, and record everything in the tables.
    ///
    /// SCENE may be a raster file (GeoTIFF/COG, JPEG 2000, ...), a STAC item JSON file, a
    /// folder, an object URL (s3://bucket/key.tif, or https://host/key.tif read by range
    /// requests) or a bucket prefix (s3://bucket/scenes/);
    /// folders and prefixes are searched for rasters and STAC items. Without --model, scenes
    /// are only tiled. Bad scenes and tiles are reported, recorded in the `dead_letter` table,
    /// and the batch goes on; the exit status is 1 when any failed. Rerunning the same batch
    /// replaces its rows rather than adding more; a rerun that fails keeps the earlier rows.
    ///
    /// Tasks (any number, all run on every tile): --caption, --classify "a,b,c" or --classes
    /// FILE, --vqa "question" (repeatable), --detect target (repeatable), or --tasks FILE (a
    /// JSON list such as [{"task": "detect", "target": "ship"}]).
    ///
    /// Examples:
    ///   strata batch data/scenes/
    ///   strata batch --model models/rs-2 --caption --classify "forest,farmland,urban,water" data/scenes/
    ///   strata batch --model s3://models/rs-2 --index s3://models/indexes/osm \
    ///       --detect ship --detect "flooded building" --vqa "Is there flooding?" s3://imagery/2024/
    ///   AWS_ENDPOINT_URL=http://127.0.0.1:9000 strata batch s3://imagery/2024/ --tables s3://results/tables
    ///
    /// Then, for example, each detection with the tile image it was found on:
    ///   strata query "SELECT d.scene_id, d.label, d.score, t.tile_uri FROM detections d
    ///       JOIN tiles t ON d.request_id = t.request_id AND d.scene_id = t.scene_id AND d.tile_id = t.tile_id"
    #[command(verbatim_doc_comment)]
    Batch(BatchArgs),

    /// Run SQL over the result tables (tiles, scenes, dead_letter, captions, classifications,
    /// vqa, detections).
    ///
    /// Geometries print as WKT, or as GeoJSON features with --format geojson.
    ///
    /// Examples:
    ///   strata query "SELECT scene_id, count(*) AS tiles FROM tiles GROUP BY scene_id"
    ///   strata query --format geojson "SELECT tile_id, geometry FROM tiles" > tiles.geojson
    #[command(verbatim_doc_comment)]
    Query(QueryArgs),

    /// Draw the result tables on a map: one self-contained HTML file that opens from the local
    /// disk with no network (Leaflet is inlined).
    ///
    /// Each tile image sits at its footprint, detections are boxes with label and score,
    /// captions, classes and VQA answers show on click, and each task is a layer (with a
    /// legend of labels). `--where` selects tiles; every layer shows what belongs to them.
    ///
    /// Examples:
    ///   strata map --tables strata-out/tables --out map.html
    ///   strata map --tables s3://bucket/tables --where "request_id = 'harbour-2026-11'" --out harbour.html
    #[command(verbatim_doc_comment)]
    Map(MapArgs),

    /// Maintain the result tables (Delta Lake tables: a transaction log beside GeoParquet
    /// files, readable by DuckDB, polars, Spark and GeoPandas through their Delta readers).
    #[command(subcommand)]
    Tables(TablesCommand),

    /// Show what this installation can do: devices, native libraries, schema version, tables.
    ///
    /// Example: strata info --device auto --tables
    Info(InfoArgs),

    /// Make, check and try model artifacts (config, tokenizer, weights, sha256 manifest).
    #[command(subcommand)]
    Model(ModelCommand),

    /// Evaluate: run a model on a benchmark and print the paper-style table, or score an
    /// answer file from any model.
    ///
    /// Benchmarks (give the folder as downloaded): aid, whu-rs19, nwpu-resisc45, siri-whu,
    /// meter-ml, fmow (classification); rsvqa-lr, rsvqa-hr (VQA); dior-rsvg (grounding);
    /// dior-det (detection: every image asked for every label, AP@0.5 as VOC and DIOR report
    /// it, and false detections on images without the label; the folder holds VOC XML in
    /// `Annotations/Horizontal Bounding Boxes/` or `Annotations/`, the split's image ids in
    /// `ImageSets/Main/test.txt`, images in `JPEGImages-test/` or `JPEGImages/` named by each
    /// XML's <filename>; --limit counts (image, label) questions); ucm-captions,
    /// sydney-captions, rsicd, nwpu-captions (captioning).
    ///
    /// Examples:
    ///   strata eval --benchmark aid --data ~/datasets/AID --model models/rs-2 --limit 500
    ///   strata eval score --task caption --pred preds.jsonl --ref refs.jsonl
    ///   strata eval score --task ground --pred boxes.jsonl --ref rsvg.jsonl --format json
    ///   strata eval --benchmark dior-det --data ~/datasets/DIOR --model models/rs-2 --limit 2000
    ///
    /// Answer files are JSON Lines: predictions `{"id": ..., "answer": ...}`, references
    /// `{"id": ..., "references": [...]}` (optional "type" for VQA question types, "classes" for
    /// classification candidates, "image_size": [w, h] for grounding answers on the 0-1000
    /// grid). Grounding boxes are `[x1, y1, x2, y2]` pixel lists. Detection references hold
    /// every box of one label on one image (none where it is absent) with the label as "type";
    /// a prediction's boxes are ranked by its optional "box_scores" (one per well-formed box,
    /// in order, as `strata eval` writes them), else by its optional "score".
    #[command(verbatim_doc_comment)]
    Eval(EvalArgs),

    /// Build and search the semantic description database the retriever feeds the model.
    #[command(subcommand)]
    Index(IndexCommand),

    /// Make data sets: `strata data synth` renders a learnable one.
    #[command(subcommand)]
    Data(DataCommand),

    /// Train a model: stage 1 (`align`, image–caption pairs: projector and prompter) and
    /// stage 2 (`instruct`, instructions: prompter, projector, experts, LoRA, vision tower).
    #[command(subcommand)]
    Train(TrainCommand),

    /// Run the chain on Kafka, forever: read scene requests, tiles or results from their
    /// topic, process them, and write the next topic or the tables.
    ///
    /// Roles (one consumer group each, `strata-<role>`; run more processes of a role to share
    /// its partitions):
    ///   tile   scenes  -> tiles     (cuts scenes, writes tile PNGs under --tiles)
    ///   infer  tiles   -> results   (retrieval and the model; without --model, tiles only)
    ///   merge  results -> tables    (cross-tile merge, scene summary, result tables and
    ///                                dead letters, also sent to the dead-letter topic)
    ///   all    the three in one process
    ///
    /// An offset is stored only once every output of its message is durable (produced and
    /// acknowledged, or committed to the tables), so a crash or a kill at any point replays
    /// unfinished work and the tables get each row once. SIGTERM or Ctrl-C stops reading,
    /// drains for --drain-timeout, commits and leaves the group.
    ///
    /// Examples:
    ///   strata serve --brokers 127.0.0.1:9092 --role all --model models/rs-2
    ///   strata serve --brokers kafka:9092 --role infer --model s3://models/rs-2 --device cuda
    ///   strata submit --brokers 127.0.0.1:9092 --caption --detect ship data/scenes/
    #[command(verbatim_doc_comment)]
    Serve(ServeArgs),

    /// Send scene requests to the `scenes` topic for `strata serve` (same scenes and task
    /// flags as `strata batch`). Prints the request id; results land in the tables under it.
    ///
    /// Examples:
    ///   strata submit --brokers 127.0.0.1:9092 --caption data/scenes/
    ///   strata submit --brokers kafka:9092 --detect ship --request-id harbour-2026-11 s3://imagery/2026/11/
    #[command(verbatim_doc_comment)]
    Submit(SubmitArgs),

    /// List the records of the `dead-letter` topic, or replay their original payloads to the
    /// topics they were read from (after fixing the cause: a missing object uploaded, a
    /// worker upgraded). Replayed inputs are processed like new ones; a scene that then
    /// succeeds replaces nothing but its own rows.
    ///
    /// Examples:
    ///   strata dead-letters list --brokers 127.0.0.1:9092
    ///   strata dead-letters replay --stage tile --request-id harbour-2026-11
    #[command(verbatim_doc_comment, subcommand)]
    DeadLetters(DeadLettersCommand),

    /// How far behind each role is: per consumer group and topic, the messages done, the
    /// messages in the topic and the lag; and how many dead letters there are. Read-only.
    ///
    /// Example: strata status --brokers 127.0.0.1:9092
    #[command(verbatim_doc_comment)]
    Status(StatusArgs),

    /// Check a configuration file, or list every key the serving commands read.
    ///
    /// `strata serve`, `submit`, `status` and `dead-letters` read their settings from, in
    /// increasing precedence: built-in defaults, a TOML file (--config or STRATA_CONFIG), the
    /// environment (STRATA_<KEY>, e.g. STRATA_BATCH_SIZE=8), and flags. A key is a flag's name
    /// with `_` for `-`: `batch_size = 8` in the file is `--batch-size 8`.
    ///
    /// Examples:
    ///   strata config check --config strata.toml
    ///   strata config keys
    ///   strata config keys --format json
    #[command(verbatim_doc_comment, subcommand)]
    Config(ConfigCommand),
}

/// `strata config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration (file, environment) as `strata serve` would read it, without
    /// connecting to anything; print every key's effective value and where it came from.
    Check(ConfigCheckArgs),
    /// Every key: its environment variable, default and meaning.
    Keys(ConfigKeysArgs),
}

/// Arguments of `strata config check`.
#[derive(Debug, Args)]
pub struct ConfigCheckArgs {
    /// The TOML file to check (default: only the environment and defaults).
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// Arguments of `strata config keys`.
#[derive(Debug, Args)]
pub struct ConfigKeysArgs {
    /// A table for people, or JSON for tools (deploy checks).
    #[arg(long, value_enum, default_value = "text")]
    pub format: KeysFormat,
}

/// Output of `strata config keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeysFormat {
    /// Aligned text.
    Text,
    /// JSON, for tools.
    Json,
}

/// Arguments of `strata status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Also show the version this model registry serves (what infer workers following it
    /// run, or switch to between batches).
    #[arg(long, env = "STRATA_MODEL_REGISTRY", value_name = "URL")]
    pub model_registry: Option<String>,
}

/// `strata dead-letters` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// One line per record: time, stage, kind, request/scene/tile, source topic/partition@offset, error.
    List(DeadLettersArgs),
    /// Send the selected records' original payloads back to their source topics.
    Replay(DeadLettersArgs),
}

/// Which dead letters `strata dead-letters` reads.
#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Only records of this stage (ingest, tile, infer, merge, sink).
    #[arg(long)]
    pub stage: Option<String>,

    /// Only records of this request.
    #[arg(long)]
    pub request_id: Option<String>,

    /// Seconds to wait for the broker.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// Where Kafka is and what the topics are called (`strata serve`, `strata submit`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// A TOML file of settings: keys are flag names with `_` for `-` (see `strata config
    /// keys`). Flags and STRATA_* variables override it.
    #[arg(long = "config", env = "STRATA_CONFIG", value_name = "FILE")]
    pub config_file: Option<std::path::PathBuf>,

    /// Kafka bootstrap servers, host:port[,host:port...].
    #[arg(long, env = "STRATA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,

    /// Prefix of every topic name (topics: scenes, tiles, results, dead-letter).
    #[arg(long, env = "STRATA_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Prefix of every consumer group name (groups: <prefix>tile, <prefix>infer, <prefix>merge).
    #[arg(long, env = "STRATA_GROUP_PREFIX", default_value = "strata-")]
    pub group_prefix: String,

    /// Static group membership (Kafka KIP-345): a stable name for this process, such as a
    /// StatefulSet pod name. A restarted process then takes its partitions back at once,
    /// without waiting for the broker to expire its previous self (the session timeout) and
    /// without a rebalance. Each consumer uses `<instance-id>-<role>`; no two running
    /// processes may share one.
    #[arg(long, env = "STRATA_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Partitions of the topics Strata creates when they do not exist.
    #[arg(long, env = "STRATA_PARTITIONS", default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// A librdkafka property KEY=VALUE applied over Strata's own (repeatable): security
    /// (security.protocol, sasl.mechanism, ...) or tuning.
    /// In a config file: a table (`[kafka_options]`, `"batch.num.messages" = "1"`); in the
    /// environment: comma-separated KEY=VALUE pairs.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_key_value, env = "STRATA_KAFKA_OPTIONS", value_delimiter = ',')]
    pub kafka_options: Vec<(String, String)>,
}

/// A count of at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a whole number: {e}")),
    }
}

/// A number in [0, 1] (an IoU, a fraction).
fn fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Ok(x) => Err(format!("{x} is not between 0 and 1")),
        Err(e) => Err(format!("`{s}` is not a number: {e}")),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

impl KafkaArgs {
    /// The runtime's settings.
    pub fn settings(&self) -> crate::serve::kafka::KafkaSettings {
        let mut settings = crate::serve::kafka::KafkaSettings::new(&self.brokers);
        settings.topics = crate::serve::kafka::Topics::with_prefix(&self.topic_prefix);
        settings.group_prefix.clone_from(&self.group_prefix);
        settings.partitions = self.partitions;
        settings.instance_id.clone_from(&self.instance_id);
        settings.options.clone_from(&self.kafka_options);
        settings
    }
}

/// What a `strata serve` process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// scenes -> tiles.
    Tile,
    /// tiles -> results.
    Infer,
    /// results -> tables (merge and sink).
    Merge,
    /// All three.
    All,
}

/// Arguments of `strata serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which stages this process runs.
    #[arg(long, value_enum, env = "STRATA_ROLE", default_value = "all")]
    pub role: Role,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Where the result tables go (a folder or URL).
    #[arg(long, env = "STRATA_TABLES", default_value = DEFAULT_TABLES)]
    pub tables: String,

    /// Where tile images go (a folder or URL); infer workers read them back from there.
    #[arg(long, env = "STRATA_TILES", default_value = DEFAULT_TILES)]
    pub tiles: String,

    /// The model artifact (directory or URL) infer workers serve. Without it, infer workers
    /// pass tiles through unanswered (tiling only).
    #[arg(long, env = "STRATA_MODEL")]
    pub model: Option<String>,

    #[command(flatten)]
    pub retrieval: RetrievalArgs,

    /// Serve the version a model registry serves (see `strata model promote`), and switch
    /// to each new serving version between batches, after verifying it. Instead of --model.
    #[arg(long, env = "STRATA_MODEL_REGISTRY", value_name = "URL")]
    pub model_registry: Option<String>,

    /// Seconds between reads of the registry's serving version (announcements on the
    /// `models` topic trigger a read at once).
    #[arg(long, env = "STRATA_MODEL_POLL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub model_poll: u64,

    /// Tiles per inference micro-batch.
    #[arg(long, env = "STRATA_BATCH_SIZE", default_value_t = operators::stages::infer::default_max_batch_tiles(), value_parser = at_least_one)]
    pub batch_size: usize,

    /// Answers decoded at once at most (continuous batching): when one finishes, the next
    /// waiting task of the micro-batch takes its slot at the next decoding step, so the batch
    /// stays full while answers of different lengths end. Set it below --batch-size × tasks
    /// per tile; by default every task of the micro-batch decodes at once.
    #[arg(long, env = "STRATA_DECODE_SLOTS", value_name = "ROWS", value_parser = at_least_one)]
    pub decode_slots: Option<usize>,

    /// Longest answer, in tokens.
    #[arg(long, env = "STRATA_MAX_NEW_TOKENS", default_value_t = operators::stages::infer::default_max_new_tokens(), value_parser = clap::value_parser!(i64).range(1..))]
    pub max_new_tokens: i64,

    /// Boxes of one label whose IoU exceeds this across overlapping tiles are one object.
    #[arg(long, env = "STRATA_IOU_THRESHOLD", default_value_t = operators::merge::default_iou_threshold(), value_parser = fraction)]
    pub iou_threshold: f64,

    /// Merge role: every this many minutes, compact the result tables and vacuum what no
    /// version younger than 7 days references, as `strata tables compact` does (one merge
    /// worker of a group is enough). Off by default.
    #[arg(long, env = "STRATA_COMPACT_EVERY", value_name = "MINUTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub compact_every: Option<u64>,

    /// Device for the model: auto, cpu, cuda or cuda:N.
    #[arg(long, env = "STRATA_DEVICE", default_value = "auto")]
    pub device: model::device::DevicePreference,
    /// Numeric type of the model's weights: auto, f32 or bf16. auto is bf16 on CUDA, and on
    /// CPUs with AVX-512 BF16 for language models at least 512 wide (bf16 halves the bytes
    /// each decoding step reads; narrower models run faster in f32); f32 elsewhere. `strata
    /// info` says what auto picks on this machine.
    #[arg(long, env = "STRATA_PRECISION", default_value = "auto")]
    pub precision: model::device::Precision,

    /// Refuse scenes declaring more pixels than this (protects against decompression bombs).
    #[arg(long, env = "STRATA_MAX_SCENE_MEGAPIXELS", default_value_t = 4295)]
    pub max_scene_megapixels: u64,

    /// CPU threads: the tiler's workers per scene and libtorch's intra-op threads (default: the
    /// CPUs this process may use, or OMP_NUM_THREADS). Give each job on a shared machine its
    /// share; two jobs that each take every CPU slow each other down many times over.
    #[arg(long, env = "STRATA_THREADS", value_parser = at_least_one)]
    pub threads: Option<usize>,

    /// Address of the HTTP endpoints /metrics (Prometheus), /healthz and /readyz; `off` for
    /// none. Give each process on one host its own port.
    #[arg(long, env = "STRATA_LISTEN", default_value = "0.0.0.0:9464")]
    pub listen: String,

    /// Messages read and not yet durable, per tile or infer role; reading pauses at this many.
    /// (The merge role holds every result of a scene until the scene is complete: no cap.)
    #[arg(long, env = "STRATA_MAX_IN_FLIGHT", default_value_t = 256, value_parser = at_least_one)]
    pub max_in_flight: usize,

    /// Seconds a shutdown waits for in-flight work before leaving it to be replayed.
    #[arg(long, env = "STRATA_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
}

/// Arguments of `strata submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Scenes: files, folders, STAC item files, object URLs or prefixes. Local paths are sent
    /// as absolute file paths, so workers must see the same filesystem; use object URLs
    /// (s3://...) when they run elsewhere.
    #[arg(required = true, value_name = "SCENE")]
    pub scenes: Vec<String>,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Request id recorded on every row; by default derived from the inputs and options.
    #[arg(long)]
    pub request_id: Option<String>,

    #[command(flatten)]
    pub scene: SceneOptions,

    #[command(flatten)]
    pub task: TaskArgs,
}

/// `strata train` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Stage 1: align the vision features to the language model on image–caption pairs.
    ///
    /// The training file (TOML; paths relative to it):
    ///   model = "models/base"            # the artifact to start from (`strata model init`)
    ///   data = "synth/train/align.jsonl" # LLaVA-style JSONL: id, image, conversations
    ///   held_out = "synth/test/align.jsonl"
    ///   out = "runs/align-1"              # checkpoints/, metrics.csv, model/
    ///   steps = 300
    ///   batch_size = 8                    # also: grad_accumulation, learning_rate,
    ///                                     # vision_learning_rate, warmup_steps, max_grad_norm,
    ///                                     # weight_decay, seed, checkpoint_every, eval_every,
    ///                                     # eval_samples, eval_max_new_tokens, image_root,
    ///                                     # model_version, index, retrieval_encoder, retrieve_k,
    ///                                     # train_base_llm (also train a from-scratch base LLM)
    ///   precision = "auto"                # bf16 autocast over f32 weights on CUDA, f32 on CPU;
    ///                                     # "f32" or "bf16" (autocast on any device) to choose
    ///
    /// Example:
    ///   strata train align --config align.toml
    ///   strata train align --config align.toml --resume     # after an interruption
    #[command(verbatim_doc_comment)]
    Align(TrainArgs),
    /// Stage 2: instruction tuning (classification, captions, VQA, grounding), from the stage-1
    /// artifact. The training file has the same keys as `align`'s.
    ///
    /// Example:
    ///   strata train instruct --config instruct.toml
    #[command(verbatim_doc_comment)]
    Instruct(TrainArgs),
    /// Train the retriever's image tower contrastively on image–text pairs, against the locked
    /// text encoder the index is built with, so tiles retrieve the descriptions of what they
    /// show. Reports held-out image → text recall@1/5/10 before training and at every
    /// evaluation (eval.csv).
    ///
    /// The training file (TOML; paths relative to it):
    ///   start = "models/base"             # a model artifact (its SigLIP tower starts the image
    ///                                     # tower) or a tower from an earlier run
    ///   data = "synth/train/retriever.jsonl"  # image–text pairs: {"image", "text"} lines,
    ///                                     # or LLaVA-style JSONL (the first answer is the text)
    ///   held_out = "synth/test/retriever.jsonl"
    ///   out = "runs/retriever-1"          # checkpoints/, metrics.csv, eval.csv, retriever/
    ///   steps = 300
    ///   batch_size = 32                   # also: text_encoder (default all-MiniLM-L6-v2),
    ///                                     # learning_rate, vision_learning_rate, warmup_steps,
    ///                                     # max_grad_norm, weight_decay, seed, checkpoint_every,
    ///                                     # eval_every, image_root, precision
    ///
    /// Example:
    ///   strata train retriever --config retriever.toml
    ///   strata index search --index INDEX --encoder runs/retriever-1/retriever --image tile.png -k 3
    #[command(verbatim_doc_comment)]
    Retriever(TrainArgs),
}

/// Arguments of `strata train align|instruct`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The training file (TOML).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// Continue from the run folder's latest checkpoint (refused if another configuration
    /// wrote it).
    #[arg(long)]
    pub resume: bool,
    /// Run about this many steps now (up to the end of the accumulation cycle), then
    /// checkpoint and stop; continue later with --resume. A long run split into sessions, e.g.
    /// on preemptible machines.
    #[arg(long, value_parser = at_least_one)]
    pub stop_after: Option<usize>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `strata data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Render a learnable data set of aerial-like scenes with known answers: six scene classes
    /// (farmland, forest, lake, residential, harbor, industrial), buildings, ships and storage
    /// tanks with boxes, a caption and questions per scene. Deterministic per seed.
    ///
    /// Writes, under --out:
    ///   images/<id>.png                 every scene
    ///   annotations.jsonl               the ground truth of every scene (class, boxes, caption, QA)
    ///   {train,test}/align.jsonl        image–caption pairs (LLaVA conversations), for `strata train align`
    ///   {train,test}/instruct.jsonl     classify, caption, VQA, grounding and detection turns, for `strata train instruct`
    ///   {train,test}/retriever.jsonl    image–text pairs, for a retriever
    ///   manifest.json                   the settings and counts of the data set
    ///   scenes/*.tif, scenes/truth.jsonl  with --scenes: georeferenced mosaics for `strata batch`
    ///   eval/aid, eval/ucm-captions, eval/rsvqa, eval/dior-rsvg, eval/dior-det   the test split in
    ///                                   the layouts `strata eval --benchmark aid|ucm-captions|rsvqa-lr|dior-rsvg|dior-det` reads
    ///
    /// Example:
    ///   strata data synth --out data/synth --n 600 --seed 1
    ///   strata eval --benchmark aid --data data/synth/eval/aid --model models/demo
    #[command(verbatim_doc_comment)]
    Synth(SynthArgs),
}

/// Arguments of `strata data synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder: new, empty, or an earlier data set (which is replaced whole).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Scenes to render, at least 6 (classes cycle, so a multiple of 6 balances them).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(6..))]
    pub n: u64,
    /// Seed: the same seed renders the same data set.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Side of each image, pixels.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(32..=2048))]
    pub size: u32,
    /// Share of scenes held out as the test split (whole groups of six, one per class).
    #[arg(long, default_value_t = 0.2, value_parser = fraction)]
    pub test_fraction: f64,
    /// Also write this many georeferenced scenes (GeoTIFF, UTM 33N, 10 m pixels) under
    /// `scenes/` for `strata batch`: each a mosaic of --scene-grid² renders that are in neither
    /// split, with their classes, captions and boxes in `scenes/truth.jsonl`. Tile them with
    /// `--tile-size` equal to --size and no overlap to give the model one render per tile.
    #[arg(long, default_value_t = 0)]
    pub scenes: u32,
    /// Renders per side of each generated scene.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub scene_grid: u32,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `strata index` subcommands.
#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Embed descriptions and write an index directory (resumable: rerun the same command
    /// after an interruption and finished shards are kept).
    ///
    /// INPUT files: `.jsonl` (objects with "text" and optional "id", "level", "category",
    /// "source"), `.csv` (a header with a `text` column), anything else as one description per
    /// line. `scripts/setup.sh` leaves a starter database of OpenStreetMap feature descriptions in
    /// ~/.cache/strata/assets/osm-presets/descriptions.jsonl.
    ///
    /// Examples:
    ///   strata index build --out strata-out/index ~/.cache/strata/assets/osm-presets/descriptions.jsonl
    ///   strata index build --out idx --no-hnsw my-descriptions.csv more.txt
    #[command(verbatim_doc_comment)]
    Build(IndexBuildArgs),

    /// The descriptions nearest to a text query.
    ///
    /// Examples:
    ///   strata index search --index strata-out/index --text "harbour with ships"
    ///   strata index search --index idx --text "solar farm" -k 10 --exact --format json
    ///   strata index search --index clip-idx --encoder clip-onnx --image tile.png -k 5
    #[command(verbatim_doc_comment)]
    Search(IndexSearchArgs),

    /// Upload an index directory to an object store, where `--index URL` finds it (workers
    /// download it once into ~/.cache/strata/indexes and reuse that copy until it changes).
    /// S3 is configured from the standard AWS_* environment (AWS_ENDPOINT_URL for
    /// S3-compatible servers).
    ///
    /// Examples:
    ///   strata index push --index strata-out/index --to s3://models/indexes/osm
    ///   strata index search --index s3://models/indexes/osm --text "harbour with ships"
    #[command(verbatim_doc_comment)]
    Push(IndexPushArgs),
}

/// Arguments of `strata index push`.
#[derive(Debug, Args)]
pub struct IndexPushArgs {
    /// The local index directory.
    #[arg(long)]
    pub index: std::path::PathBuf,
    /// Where to put it: s3://bucket/prefix, file:///path or memory://name/prefix.
    #[arg(long)]
    pub to: String,
}

/// Arguments of `strata index build`.
#[derive(Debug, Args)]
pub struct IndexBuildArgs {
    /// Description files.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<std::path::PathBuf>,
    /// The index directory to write.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Encoder directory (model.onnx + tokenizer.json); default: all-MiniLM-L6-v2 from setup. A CLIP
    /// encoder directory (scripts/export/clip_to_onnx.py) embeds with its text tower, so the index
    /// can then be searched with images too.
    #[arg(long)]
    pub encoder: Option<std::path::PathBuf>,
    /// Exact search only (no HNSW graph).
    #[arg(long)]
    pub no_hnsw: bool,
    /// HNSW links per node.
    #[arg(long, default_value_t = 32)]
    pub hnsw_m: usize,
    /// HNSW candidate list while building.
    #[arg(long, default_value_t = 200)]
    pub ef_construction: usize,
    /// How the HNSW graph stores its copy of the vectors. bf16 and f16 halve the memory a
    /// search reads (most of its time on large indexes); scores are always recomputed from
    /// the exact f32 embeddings.
    #[arg(long, value_enum, default_value = "bf16")]
    pub graph_precision: GraphPrecisionArg,
    /// Descriptions per resumable shard.
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Where the encoder runs: auto (CUDA when ONNX Runtime has its CUDA provider and a GPU,
    /// else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,
    /// Do not draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `--graph-precision` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphPrecisionArg {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

/// Arguments of `strata index search`.
#[derive(Debug, Args)]
pub struct IndexSearchArgs {
    /// The index: a directory, or a URL it was pushed to (s3://bucket/prefix).
    #[arg(long)]
    pub index: String,
    /// A text query.
    #[arg(long, conflicts_with = "image")]
    pub text: Option<String>,
    /// An image query (PNG, JPEG, GeoTIFF…): needs `--encoder` pointing at a CLIP-style
    /// encoder directory (see scripts/export/clip_to_onnx.py) whose text tower built the index.
    #[arg(long)]
    pub image: Option<std::path::PathBuf>,
    /// How many results.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// Search every vector instead of the HNSW graph.
    #[arg(long)]
    pub exact: bool,
    /// HNSW candidate list while searching: the recall/speed knob (default 160; 32 already
    /// gives recall@5 0.97 on 1M × 512 clustered vectors).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Encoder directory: the one the index was built with. Default: all-MiniLM-L6-v2 from setup
    /// (text queries only).
    #[arg(long)]
    pub encoder: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputStyle,
    /// Device for exact search: auto, cpu, cuda or cuda:N (the query encoder follows it onto
    /// the GPU when ONNX Runtime has its CUDA provider).
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,
}

/// Arguments of `strata eval`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    #[command(flatten)]
    pub run: EvalRunArgs,
}

/// `strata eval` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Score an answer file against references and print the table.
    Score(EvalScoreArgs),
}

/// Running a model on a benchmark.
#[derive(Debug, Args)]
pub struct EvalRunArgs {
    /// Benchmark name (see `strata eval --help`).
    #[arg(long, required = true)]
    pub benchmark: Option<String>,
    /// The benchmark folder as published.
    #[arg(long, required = true)]
    pub data: Option<std::path::PathBuf>,
    /// The model artifact directory.
    #[arg(long, required = true)]
    pub model: Option<std::path::PathBuf>,
    /// Which split, where the benchmark has splits.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Evaluate N samples spread over the split: one from each of N equal blocks of it, the
    /// same ones every run, so a benchmark laid out a folder per class is sampled in
    /// proportion to its classes (not only the first class, as the first N would be).
    #[arg(long, value_parser = at_least_one)]
    pub limit: Option<usize>,
    /// Images per model batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Where predictions.jsonl, references.jsonl, report.json and report.parquet go.
    #[arg(long, default_value = "strata-out/eval")]
    pub out: std::path::PathBuf,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,
    /// Numeric type of the model's weights: auto, f32 or bf16. auto is bf16 on CUDA, and on
    /// CPUs with AVX-512 BF16 for language models at least 512 wide (bf16 halves the bytes
    /// each decoding step reads; narrower models run faster in f32); f32 elsewhere. `strata
    /// info` says what auto picks on this machine.
    #[arg(long, default_value = "auto")]
    pub precision: model::device::Precision,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    /// Table format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputStyle,
    #[command(flatten)]
    pub scorers: ScorerArgs,
    /// Do not draw a progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// Caption-metric options.
#[derive(Debug, Args)]
pub struct ScorerArgs {
    /// BERTScore encoder (a BERT checkpoint folder); default: all-MiniLM-L6-v2 fetched by setup.
    #[arg(long)]
    pub bertscore_model: Option<std::path::PathBuf>,
    /// Skip BERTScore.
    #[arg(long)]
    pub no_bertscore: bool,
    /// WordNet 3.0 folder for METEOR's synonyms; default: the one fetched by setup.
    #[arg(long)]
    pub wordnet: Option<std::path::PathBuf>,
    /// Caption evaluation protocol, printed with every table and in report.json:
    /// `coco` (default; pycocoevalcap 1.2 on PTB tokens: BLEU-1..4, ROUGE-L, CIDEr-D) or
    /// `rs-lvlm` (nltk word_tokenize tokens: BLEU, CIDEr-D, nltk METEOR; rouge-score ROUGE-1/L
    /// with Porter stemming), as remote-sensing LVLM evaluation scripts compute them (`nltk` is
    /// another name for it).
    #[arg(long, default_value = "coco", value_name = "coco|rs-lvlm")]
    pub protocol: eval::protocol::Protocol,
    /// ROUGE over several references under `rs-lvlm`: the best one (rouge-score's
    /// score_multi) or the mean.
    #[arg(long, default_value = "max", value_name = "max|mean")]
    pub rouge_refs: eval::protocol::ReferenceAggregate,
    /// ROUGE under `rs-lvlm` without Porter stemming (rouge-score's use_stemmer=False).
    #[arg(long)]
    pub no_rouge_stemmer: bool,
    /// Porter-stem ROUGE tokens: the default now; kept so older scripts still run.
    #[arg(long, hide = true, conflicts_with = "no_rouge_stemmer")]
    pub rouge_stemmer: bool,
}

/// Arguments of `strata eval score`.
#[derive(Debug, Args)]
pub struct EvalScoreArgs {
    /// caption, vqa, classify, ground or detect.
    #[arg(long)]
    pub task: eval::score::Task,
    /// Predictions (JSON Lines).
    #[arg(long)]
    pub pred: std::path::PathBuf,
    /// References (JSON Lines).
    #[arg(long = "ref")]
    pub references: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputStyle,
    #[command(flatten)]
    pub scorers: ScorerArgs,
}

/// `strata model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Create an artifact from Hugging Face base checkpoints (a SigLIP and a Qwen2/Qwen2.5),
    /// with the new modules (projector, prompter, experts, LoRA) freshly initialised: the start
    /// of training stage 1.
    ///
    /// CONFIG is the whole model's config.json: `vision` and `llm` are the checkpoints' own
    /// Hugging Face configs, the other sections size the new modules.
    ///
    /// Examples:
    ///   strata model init --config config.json --tokenizer qwen/tokenizer.json \
    ///       --checkpoint siglip/model.safetensors --checkpoint qwen/model-00001-of-00004.safetensors ... \
    ///       --model-version base-1 --out models/base-1
    ///   strata model init --config tiny.json --tokenizer tokenizer.json --random --model-version dev --out /tmp/m
    #[command(verbatim_doc_comment)]
    Init(ModelInitArgs),

    /// Check an artifact: every file's sha256 against its manifest, and the config; print a
    /// summary. Exit status 1 when it does not verify.
    ///
    /// Example: strata model verify models/rs-2
    Verify {
        /// The artifact directory.
        dir: std::path::PathBuf,
    },

    /// Answer a query about one or more images (PNG, JPEG, TIFF...) with a model artifact.
    ///
    /// Prints one line per image: path, score (geometric-mean token probability) and answer.
    ///
    /// Examples:
    ///   strata model ask --model models/rs-2 --image tile.png "Describe the image in detail."
    ///   strata model ask --model models/rs-2 --image a.png --image b.png --format json \
    ///       --description "A harbour with ships." "How many ships are there?"
    #[command(verbatim_doc_comment)]
    Ask(ModelAskArgs),

    /// Upload an artifact to an object store (its hashes checked first; manifest.json last, so
    /// readers never see half a version). Workers then load it with `--model URL`. S3 is
    /// configured from the standard AWS_* environment (AWS_ENDPOINT_URL for S3-compatible
    /// servers).
    ///
    /// Example: strata model push --model models/rs-2 --to s3://models/rs-2
    #[command(verbatim_doc_comment)]
    Push(ModelPushArgs),

    /// Download an artifact into ~/.cache/strata/models (or reuse the copy there while the
    /// remote manifest is unchanged), verify it, and print where it is.
    ///
    /// Example: strata model fetch s3://models/rs-2
    #[command(verbatim_doc_comment)]
    Fetch {
        /// The artifact's URL.
        url: String,
    },

    /// Publish an artifact to a model registry (an object-store prefix): its hashes checked,
    /// uploaded under versions/<version>/, and its lineage recorded (parent version, training
    /// config, data digest, evaluation metrics). Versions are immutable: the same artifact
    /// again is a no-op, other contents under a published version are refused.
    ///
    /// Examples:
    ///   strata model publish models/rs-3 --to s3://models/registry --metrics eval.json \
    ///       --training-config train.toml --data-digest sha256:9f2c...
    ///   strata model publish models/rs-3 --to s3://models/registry --promote
    #[command(verbatim_doc_comment)]
    Publish(ModelPublishArgs),

    /// List a registry's versions with their lineage; `*` marks the serving one.
    ///
    /// Example: strata model list --registry s3://models/registry
    #[command(verbatim_doc_comment)]
    List(RegistryArgs),

    /// Make a published version the serving one (it is downloaded and verified first; a
    /// corrupt or replaced artifact is refused and the serving version stays). Infer workers
    /// started with --model-registry switch to it between batches.
    ///
    /// Example: strata model promote rs-3 --registry s3://models/registry
    #[command(verbatim_doc_comment)]
    Promote(ModelPromoteArgs),

    /// Return to the version that served before the current one.
    ///
    /// Example: strata model rollback --registry s3://models/registry
    #[command(verbatim_doc_comment)]
    Rollback(ModelRollbackArgs),
}

/// Which registry (`strata model list`).
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// The registry's URL: s3://bucket/prefix, file:///path or a folder.
    #[arg(long, env = "STRATA_MODEL_REGISTRY")]
    pub registry: String,
    /// Text for people, or JSON ({"serving": ..., "versions": [lineage...]}).
    #[arg(long, value_enum, default_value = "text")]
    pub format: KeysFormat,
}

/// Arguments of `strata model rollback`.
#[derive(Debug, Args)]
pub struct ModelRollbackArgs {
    /// The registry's URL: s3://bucket/prefix, file:///path or a folder.
    #[arg(long, env = "STRATA_MODEL_REGISTRY")]
    pub registry: String,
    #[command(flatten)]
    pub announce: AnnounceArgs,
}

/// Arguments of `strata model promote`.
#[derive(Debug, Args)]
pub struct ModelPromoteArgs {
    /// The version to serve.
    #[arg(value_name = "VERSION")]
    pub model_version: String,
    /// The registry's URL: s3://bucket/prefix, file:///path or a folder.
    #[arg(long, env = "STRATA_MODEL_REGISTRY")]
    pub registry: String,
    #[command(flatten)]
    pub announce: AnnounceArgs,
}

/// Arguments of `strata model publish`.
#[derive(Debug, Args)]
pub struct ModelPublishArgs {
    /// The local artifact directory.
    pub model: std::path::PathBuf,
    /// The registry's URL.
    #[arg(long, env = "STRATA_MODEL_REGISTRY")]
    pub to: String,
    /// The version it was trained from (default: the manifest's parent_version).
    #[arg(long)]
    pub parent: Option<String>,
    /// The training job's configuration file (TOML or JSON), recorded in the lineage.
    #[arg(long, value_name = "FILE")]
    pub training_config: Option<std::path::PathBuf>,
    /// A digest naming the training data (e.g. its manifest's sha256).
    #[arg(long)]
    pub data_digest: Option<String>,
    /// Evaluation metrics: a JSON object of name -> number (e.g. {"accuracy": 0.93}).
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<std::path::PathBuf>,
    /// Also make it the serving version.
    #[arg(long)]
    pub promote: bool,
    #[command(flatten)]
    pub announce: AnnounceArgs,
}

/// Where to announce a new serving version (`promote`, `rollback`, `publish --promote`).
#[derive(Debug, Args)]
pub struct AnnounceArgs {
    /// Announce the change on the `models` topic of these brokers, so infer workers switch at
    /// once (they also poll the registry every --model-poll seconds).
    #[arg(long, env = "STRATA_BROKERS")]
    pub brokers: Option<String>,
    /// Prefix of the topic names, as the workers use.
    #[arg(long, env = "STRATA_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
}

/// Arguments of `strata model push`.
#[derive(Debug, Args)]
pub struct ModelPushArgs {
    /// The local artifact directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Where to put it: s3://bucket/prefix, file:///path or memory://name/prefix.
    #[arg(long)]
    pub to: String,
}

/// Arguments of `strata model init`.
#[derive(Debug, Args)]
pub struct ModelInitArgs {
    /// The whole model's config.json.
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// The LLM's tokenizer.json (Qwen2/Qwen2.5, with the ChatML tokens).
    #[arg(long)]
    pub tokenizer: std::path::PathBuf,
    /// Base checkpoint files (`*.safetensors`), repeatable.
    #[arg(long)]
    pub checkpoint: Vec<std::path::PathBuf>,
    /// Initialise every weight randomly instead (experiments, tests).
    #[arg(long, conflicts_with = "checkpoint")]
    pub random: bool,
    /// Version recorded in the manifest (`--version` prints strata's own).
    #[arg(long = "model-version")]
    pub model_version: String,
    /// Parent version recorded in the manifest.
    #[arg(long)]
    pub parent: Option<String>,
    /// Training run recorded in the manifest.
    #[arg(long)]
    pub training_run: Option<String>,
    /// Output directory.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Device to build on: auto, cpu, cuda or cuda:N (bf16 on CUDA, f32 on CPU).
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,
    /// Seed of the random initialisation (the new modules, or every weight with --random): the
    /// same command makes the same artifact.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputStyle {
    /// Human-readable (`model ask`: tab-separated image, score, answer; `eval`: a table).
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `strata model ask`.
#[derive(Debug, Args)]
pub struct ModelAskArgs {
    /// The artifact directory.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// Images (PNG, JPEG, TIFF, any size; resized to the vision tower's input), repeatable.
    #[arg(long = "image", required = true)]
    pub images: Vec<std::path::PathBuf>,
    /// The query: a task instruction or a question.
    pub query: String,
    /// Retrieved descriptions to give the prompter, best first (repeatable); or let --index
    /// retrieve them.
    #[arg(long = "description", conflicts_with = "index")]
    pub descriptions: Vec<String>,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    /// Longest answer, in tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: i64,
    /// Sample with this temperature (nucleus sampling) instead of greedy decoding.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus mass kept when sampling.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputStyle,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,
    /// Numeric type of the model's weights: auto, f32 or bf16. auto is bf16 on CUDA, and on
    /// CPUs with AVX-512 BF16 for language models at least 512 wide (bf16 halves the bytes
    /// each decoding step reads; narrower models run faster in f32); f32 elsewhere. `strata
    /// info` says what auto picks on this machine.
    #[arg(long, default_value = "auto")]
    pub precision: model::device::Precision,
}

/// Retrieval for the prompter (`strata model ask`, `strata eval`).
#[derive(Debug, Clone, Args)]
pub struct RetrievalArgs {
    /// Retrieve descriptions for each image from this index (a directory or the URL it was
    /// pushed to). Without it the prompter gets no descriptions.
    #[arg(long)]
    pub index: Option<String>,
    /// Encoder that queries the index: a CLIP-style directory with image_model.onnx, or a tower
    /// from `strata train retriever`, retrieves by image; a text encoder retrieves by the
    /// question. Default: all-MiniLM-L6-v2 from setup.
    #[arg(long)]
    pub retrieval_encoder: Option<std::path::PathBuf>,
    /// Descriptions per image (default: the model's top_k).
    #[arg(long)]
    pub retrieve_k: Option<usize>,
    /// HNSW candidate list while searching (default 160).
    #[arg(long)]
    pub ef: Option<usize>,
}

/// Where result tables live unless --tables says otherwise.
pub const DEFAULT_TABLES: &str = "strata-out/tables";
/// Where tile images go unless --tiles says otherwise.
pub const DEFAULT_TILES: &str = "strata-out/tiles";

fn parse_list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',').map(|part| part.trim().parse().map_err(|_| format!("`{part}` is not valid"))).collect()
}

/// How scenes are cut into tiles (`strata batch`, `strata submit`).
#[derive(Debug, Clone, Args)]
pub struct SceneOptions {
    /// Side of each source window, in scene pixels.
    #[arg(long, default_value_t = 512)]
    pub tile_size: u32,

    /// Overlap between neighbouring windows, in scene pixels.
    #[arg(long, default_value_t = 64)]
    pub overlap: u32,

    /// Side of each tile image written for the model, in pixels.
    #[arg(long, default_value_t = 384)]
    pub output_size: u32,

    /// Bands mapped to R,G,B (1-based, e.g. 4,3,2), or one band shown as grey. Default: from
    /// the file's colour interpretation, else by band count (6 bands: 3,2,1 as Landsat
    /// TM/ETM+; 7 or more: 4,3,2 as Landsat 8/Sentinel-2).
    #[arg(long, value_parser = parse_list::<u32>)]
    pub bands: Option<Vec<u32>>,

    /// Nodata value overriding the one the rasters declare.
    #[arg(long, allow_hyphen_values = true)]
    pub nodata: Option<f64>,

    /// STAC asset keys to read: one visual asset, or three band assets in R,G,B order.
    #[arg(long, value_parser = parse_list::<String>)]
    pub assets: Option<Vec<String>>,

    /// How band values become tile colours: `percentile` (default) stretches each band between
    /// its 2nd and 98th percentile over the scene, for sensor values of any bit depth; `none`
    /// writes them as they are (clamped to 0–255), for 8-bit RGB that is display-ready already
    /// (orthophotos, `strata data synth --scenes`), so tiles keep the colours a model saw.
    #[arg(long, value_name = "percentile|none")]
    pub stretch: Option<schemas::Stretch>,
}

impl SceneOptions {
    /// The tiling options of a scene request.
    pub fn tiling(&self) -> schemas::TilingOptions {
        schemas::TilingOptions {
            tile_size_px: self.tile_size,
            overlap_px: self.overlap,
            output_size_px: self.output_size,
            bands: self.bands.clone(),
            nodata: self.nodata,
            stac_assets: self.assets.clone(),
            stretch: self.stretch,
        }
    }
}

/// The tasks to run on every tile (`strata batch`, `strata submit`).
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// Caption every tile.
    #[arg(long, help_heading = "Tasks")]
    pub caption: bool,

    /// Classify every tile into one of these comma-separated classes.
    #[arg(long, value_name = "CLASSES", help_heading = "Tasks", conflicts_with = "classes")]
    pub classify: Option<String>,

    /// Classify every tile into one of the classes listed in FILE (one per line, or
    /// comma-separated).
    #[arg(long, value_name = "FILE", help_heading = "Tasks")]
    pub classes: Option<std::path::PathBuf>,

    /// Ask every tile this question (repeatable).
    #[arg(long, value_name = "QUESTION", help_heading = "Tasks")]
    pub vqa: Vec<String>,

    /// Find every instance of this target on every tile (repeatable), e.g. ship.
    #[arg(long, value_name = "TARGET", help_heading = "Tasks")]
    pub detect: Vec<String>,

    /// Tasks as a JSON list, e.g. [{"task": "caption"}, {"task": "detect", "target": "ship"}];
    /// added after the flags' tasks.
    #[arg(long, value_name = "FILE", help_heading = "Tasks")]
    pub tasks: Option<std::path::PathBuf>,
}

impl TaskArgs {
    /// The tasks the flags ask for, in flag order, then those of `--tasks`.
    pub fn tasks(&self) -> anyhow::Result<Vec<schemas::TaskSpec>> {
        let args = self;
        // Each task with the flag it came from, so an error names what the user typed.
        let mut tasks: Vec<(schemas::TaskSpec, String)> = Vec::new();
        if args.caption {
            tasks.push((schemas::TaskSpec::Caption { prompt: None }, "--caption".to_owned()));
        }
        let classes = match (&args.classify, &args.classes) {
            (Some(list), _) => Some((list.clone(), "--classify".to_owned())),
            (None, Some(file)) => Some((
                std::fs::read_to_string(file).with_context(|| format!("reading --classes `{}`", file.display()))?,
                format!("--classes `{}`", file.display()),
            )),
            (None, None) => None,
        };
        if let Some((text, origin)) = classes {
            let classes: Vec<String> =
                text.split([',', '\n']).map(str::trim).filter(|c| !c.is_empty() && !c.starts_with('#')).map(str::to_owned).collect();
            tasks.push((schemas::TaskSpec::Classify { classes, prompt: None }, origin));
        }
        tasks.extend(args.vqa.iter().map(|question| (schemas::TaskSpec::Vqa { question: question.clone() }, "--vqa".to_owned())));
        tasks.extend(args.detect.iter().map(|target| (schemas::TaskSpec::Detect { target: target.clone() }, "--detect".to_owned())));
        if let Some(file) = &args.tasks {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading --tasks `{}`", file.display()))?;
            let mut de = serde_json::Deserializer::from_str(&text);
            let more: Vec<schemas::TaskSpec> =
                serde_path_to_error::deserialize(&mut de).with_context(|| format!("`{}` is not a JSON list of tasks", file.display()))?;
            tasks.extend(more.into_iter().enumerate().map(|(i, task)| (task, format!("--tasks `{}`, task {}", file.display(), i + 1))));
        }
        for (task, origin) in &tasks {
            let mut probe = schemas::SceneRequest::new("probe", "probe", schemas::SceneSource::Uri { uri: "probe".to_owned() });
            probe.tasks = vec![task.clone()];
            if let Err(schemas::SchemaError::Invalid { field, reason, .. }) = schemas::Message::validate(&probe) {
                match field.trim_start_matches("tasks[0].") {
                    "question" | "target" => anyhow::bail!("{origin}: {reason}"),
                    field => anyhow::bail!("{origin}, {field}: {reason}"),
                }
            }
        }
        let tasks: Vec<schemas::TaskSpec> = tasks.into_iter().map(|(task, _)| task).collect();
        // The checks of the tasks together (a scene request's).
        let mut probe = schemas::SceneRequest::new("probe", "probe", schemas::SceneSource::Uri { uri: "probe".to_owned() });
        probe.tasks = tasks.clone();
        schemas::Message::validate(&probe).context("checking the tasks")?;
        Ok(tasks)
    }
}

/// Arguments of `strata batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Scenes: files, folders, STAC item files, object URLs or prefixes.
    #[arg(required = true, value_name = "SCENE")]
    pub scenes: Vec<String>,

    /// Where the result tables go (a folder or URL).
    #[arg(long, env = "STRATA_TABLES", default_value = DEFAULT_TABLES)]
    pub tables: String,

    /// Where tile images go (a folder or URL).
    #[arg(long, env = "STRATA_TILES", default_value = DEFAULT_TILES)]
    pub tiles: String,

    /// Request id recorded on every row; by default derived from the inputs and options, so
    /// rerunning the same batch replaces its rows.
    #[arg(long)]
    pub request_id: Option<String>,

    #[command(flatten)]
    pub scene: SceneOptions,

    /// Refuse scenes declaring more pixels than this (protects against decompression bombs).
    #[arg(long, default_value_t = 4295)]
    pub max_scene_megapixels: u64,

    /// CPU threads: the tiler's workers per scene and libtorch's intra-op threads (default: the
    /// CPUs this process may use, or OMP_NUM_THREADS). Give each job on a shared machine its
    /// share; two jobs that each take every CPU slow each other down many times over.
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,

    /// Scenes tiled at the same time.
    #[arg(long, default_value_t = 1)]
    pub scene_concurrency: usize,

    /// The model artifact: a directory, or the URL it was pushed to (s3://bucket/models/rs-2;
    /// fetched once into ~/.cache/strata/models). Without it (or --model-registry) scenes are
    /// only tiled.
    #[arg(long, conflicts_with = "model_registry")]
    pub model: Option<String>,

    /// Run the version this model registry serves (`strata model promote`), fetched and
    /// verified against its published hashes; rows record that version.
    #[arg(long, value_name = "URL")]
    pub model_registry: Option<String>,

    #[command(flatten)]
    pub retrieval: RetrievalArgs,

    #[command(flatten)]
    pub task: TaskArgs,

    /// Tiles per inference micro-batch.
    #[arg(long, default_value_t = operators::stages::infer::default_max_batch_tiles())]
    pub batch_size: usize,

    /// Answers decoded at once at most (continuous batching): when one finishes, the next
    /// waiting task of the micro-batch takes its slot at the next decoding step, so the batch
    /// stays full while answers of different lengths end. Set it below --batch-size × tasks
    /// per tile; by default every task of the micro-batch decodes at once.
    #[arg(long, value_name = "ROWS", value_parser = at_least_one)]
    pub decode_slots: Option<usize>,

    /// Longest answer, in tokens.
    #[arg(long, default_value_t = operators::stages::infer::default_max_new_tokens())]
    pub max_new_tokens: i64,

    /// Boxes of one label whose IoU exceeds this across overlapping tiles are one object.
    #[arg(long, default_value_t = operators::merge::default_iou_threshold())]
    pub iou_threshold: f64,

    /// Device for the model: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,

    /// Numeric type of the model's weights: auto, f32 or bf16. auto is bf16 on CUDA, and on
    /// CPUs with AVX-512 BF16 for language models at least 512 wide (bf16 halves the bytes
    /// each decoding step reads; narrower models run faster in f32); f32 elsewhere. `strata
    /// info` says what auto picks on this machine.
    #[arg(long, default_value = "auto")]
    pub precision: model::device::Precision,

    /// Do not draw progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

/// `strata tables` subcommands.
#[derive(Debug, Subcommand)]
pub enum TablesCommand {
    /// Turn tables written before Strata used Delta Lake (one Parquet file per scene and table,
    /// an `_index/` folder) into Delta tables, in place: each table is created together with
    /// all its files in one commit, so no row is lost or duplicated (files with unsigned
    /// 64-bit columns are rewritten with signed ones, which every Delta reader accepts). A file
    /// that is not one of the table's stops that table's migration before anything is written;
    /// run it again after fixing it or after an interruption: migrated tables are left alone.
    /// Until then, writers and readers refuse the old layout.
    ///
    /// Example: strata tables migrate --tables s3://results/tables
    #[command(verbatim_doc_comment)]
    Migrate(TablesArgs),

    /// Rewrite the many small files the sink writes (one per scene and table) into files near
    /// --target-mib, per date, without changing any row (Delta's OPTIMIZE), then delete the
    /// files that no version younger than --retain-hours still needs (VACUUM). It can run
    /// beside writers: a compaction or vacuum that races a commit gives way (reported as
    /// "left for next time"), and readers of the versions kept can still read them. Like
    /// Delta's VACUUM, it deletes every file in a table's folder that its log does not
    /// reference once it is older than --retain-hours: keep nothing else there.
    ///
    /// Example: strata tables compact --tables s3://results/tables --retain-hours 24
    #[command(verbatim_doc_comment)]
    Compact(CompactArgs),
}

/// Arguments of `strata tables compact`.
#[derive(Debug, Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub tables: TablesArgs,

    /// Size of the files compaction writes, MiB; files under half of it are compacted.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub target_mib: u64,

    /// Hours a removed file is kept for readers of older versions before it is deleted
    /// (Delta's default is 168); 0 deletes every file the latest version does not reference.
    #[arg(long, default_value_t = 168)]
    pub retain_hours: u64,
}

/// Which tables `strata tables` works on.
#[derive(Debug, Args)]
pub struct TablesArgs {
    /// Where the result tables are.
    #[arg(long, env = "STRATA_TABLES", default_value = DEFAULT_TABLES)]
    pub tables: String,
}

/// Arguments of `strata query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL query; table names as in `strata info --tables`.
    pub sql: String,

    /// Where the result tables are.
    #[arg(long, env = "STRATA_TABLES", default_value = DEFAULT_TABLES)]
    pub tables: String,

    /// Output format: table, csv, json or geojson.
    #[arg(long, default_value = "table")]
    pub format: tables::query::OutputFormat,

    /// Rows shown by the table format.
    #[arg(long, default_value_t = 50)]
    pub max_rows: usize,
}

/// Arguments of `strata map`.
#[derive(Debug, Args)]
pub struct MapArgs {
    /// Where the result tables are.
    #[arg(long, env = "STRATA_TABLES", default_value = DEFAULT_TABLES)]
    pub tables: String,

    /// SQL condition on the `tiles` table selecting what is drawn, e.g. "scene_id = 'L7_ETMs'"
    /// (default: every tile).
    #[arg(long = "where", value_name = "SQL")]
    pub filter: Option<String>,

    /// The HTML file to write.
    #[arg(long, default_value = "strata-map.html")]
    pub out: std::path::PathBuf,

    /// Tile images embedded at most; further tiles are drawn as outlines (each image adds its
    /// PNG to the file).
    #[arg(long, default_value_t = 300)]
    pub max_images: usize,
}

/// Arguments of `strata info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Which device to probe: auto (CUDA when present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: model::device::DevicePreference,

    /// Also list every result table with its columns.
    #[arg(long)]
    pub tables: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        // clap's own checks (unique names, valid defaults...), which otherwise only fire when a
        // debug build parses the broken subcommand.
        Cli::command().debug_assert();
    }
}

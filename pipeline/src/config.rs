//! Settings of the Kafka commands (`serve`, `submit`, `status`, `dead-letters`) from one TOML
//! file and `STRATA_*` environment variables, layered under the flags.
//!
//! The schema is the command line itself: a key is a `strata serve` flag's name with `_` for
//! `-` (`batch_size = 8` is `--batch-size 8`), its variable is `STRATA_` and the key in upper
//! case (`STRATA_BATCH_SIZE`). Precedence, lowest first: built-in defaults, the file, the
//! environment, flags. Each value is checked by the flag's own parser, so a file and a flag
//! are refused for the same reasons, and the error names the key and where it came from.
//! Defaults, units and meanings live once, in the flags' doc comments; `strata config keys`
//! prints them, and the deploy manifests are checked against that list.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{parser::ValueSource, ArgAction, CommandFactory as _, FromArgMatches as _};
use serde::Serialize;

use crate::cli::{Cli, Command, ConfigCheckArgs, ConfigCommand, ConfigKeysArgs, KeysFormat};

/// Prefix of every configuration variable.
pub const ENV_PREFIX: &str = "STRATA_";

/// Arguments that are not settings: the file itself, and the built-in ones.
const NOT_KEYS: [&str; 4] = ["config_file", "help", "version", "verbose"];

/// Keys whose defaults only work with everything on one machine (a broker on 127.0.0.1, tables
/// and tiles in local folders that other processes cannot see): a deployment across machines
/// must set them. The deploy manifests are checked against this list.
const DEPLOY_REQUIRED: [&str; 3] = ["brokers", "tables", "tiles"];

/// Environment variables read besides the keys, with what they mean: the binary's first, then
/// those of the scripts that come with it (`scripts/demo.sh`, `scripts/setup.sh`, the test
/// harness, `benches/`), so one list answers "what does this variable do". Object-store
/// credentials and endpoints are read by `object_store` (`AmazonS3Builder::from_env`): any
/// `AWS_*` variable it knows, such as `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`.
pub const ENVIRONMENT: [(&str, &str); 19] = [
    ("STRATA_CONFIG", "The TOML configuration file (`--config`)"),
    ("STRATA_LOG", "Log filter, tracing-subscriber EnvFilter syntax (default: info, or debug with -v)"),
    ("STRATA_CACHE", "Cache folder for downloaded models and indexes (default ~/.cache/strata)"),
    ("STRATA_ASSETS", "Folder of the setup assets: the default text encoder, WordNet (default $STRATA_CACHE/assets)"),
    ("STRATA_LIBTORCH_LIB", "Folder of libtorch_cuda.so, loaded at start-up for CUDA (default: beside libtorch_cpu.so)"),
    ("ORT_DYLIB_PATH", "The ONNX Runtime library, libonnxruntime.so (default: the one setup installed)"),
    ("GDAL_CACHEMAX", "GDAL's block cache; Strata sets a per-process default when it is unset"),
    ("AWS_*", "S3 settings and credentials, as object_store reads them (AWS_ACCESS_KEY_ID, AWS_ENDPOINT, ...)"),
    ("COLUMNS", "Terminal width for `strata query` tables (default 160)"),
    ("POLARS_TABLE_WIDTH", "Overrides COLUMNS for `strata query` tables"),
    ("STRATA_BIN", "scripts/demo.sh: a strata binary to use instead of building one"),
    ("STRATA_DEVICE", "scripts/demo.sh: cpu (default), cuda or auto (CUDA when present) for training and batch"),
    ("STRATA_DEMO_OUT", "scripts/demo.sh: the output folder when --out is not given (default strata-out/)"),
    ("STRATA_ACCELERATOR", "scripts/setup.sh: cuda installs libtorch with its CUDA libraries (default: CPU only)"),
    ("STRATA_NISSHI_BIN", "Tests, benches and deploy/local: the nisshi broker binary (default: the one setup built)"),
    ("STRATA_MOTO_BIN", "Tests: the moto_server binary (default: the project venv's)"),
    ("STRATA_BENCH_DIR", "benches/*/compare.sh: working folder (default $STRATA_CACHE/bench)"),
    ("STRATA_BENCH_PHASES", "The training bench: also time forward, backward and optimiser separately"),
    ("STRATA_BENCH_REUSE_INDEX", "The index bench: keep an index already built in its working folder"),
];

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML (the message gives line and column).
    #[error("the configuration file {path} is not valid TOML: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's report.
        source: Box<toml::de::Error>,
    },
    /// A key no command reads (a typo would otherwise be ignored silently).
    #[error("{path}: unknown key `{key}`{hint}; `strata config keys` lists every key")]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// A close known key, as " (did you mean `x`?)", or empty.
        hint: String,
    },
    /// A value the key's parser refuses.
    #[error("{origin}: `{key}` = {value}: {reason}")]
    Value {
        /// The file, or the environment variable.
        origin: String,
        /// The key.
        key: String,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },
}

/// One configuration key, as `strata config keys` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Key {
    /// The name in the TOML file.
    pub key: String,
    /// The environment variable.
    pub env: String,
    /// The flag.
    pub flag: String,
    /// The default, if any.
    pub default: Option<String>,
    /// Whether the command refuses to start without it.
    pub required: bool,
    /// Whether it takes a list (a TOML array or table; comma-separated in the environment).
    pub repeatable: bool,
    /// Whether a deployment across machines must set it: its default only works when the
    /// broker, the tables and the tiles are on this machine.
    pub deploy_required: bool,
    /// What it means (the flag's help).
    pub help: String,
}

/// The `strata serve` command with the global flags propagated, the schema of every key.
fn serve_command() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli.find_subcommand("serve").cloned().unwrap_or_else(|| clap::Command::new("serve"))
}

fn is_key(arg: &clap::Arg) -> bool {
    arg.get_long().is_some() && !NOT_KEYS.contains(&arg.get_id().as_str())
}

fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_uppercase())
}

/// Every key the Kafka commands read, in `strata serve --help` order.
pub fn keys() -> Vec<Key> {
    serve_command()
        .get_arguments()
        .filter(|arg| is_key(arg))
        .map(|arg| {
            let key = arg.get_id().as_str().to_owned();
            let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            Key {
                env: env_name(&key),
                flag: format!("--{}", arg.get_long().unwrap_or_default()),
                default: (!defaults.is_empty()).then(|| defaults.join(",")),
                required: arg.is_required_set(),
                repeatable: matches!(arg.get_action(), ArgAction::Append),
                deploy_required: DEPLOY_REQUIRED.contains(&key.as_str()),
                help: arg.get_help().map(|h| h.to_string().replace('\n', " ")).unwrap_or_default(),
                key,
            }
        })
        .collect()
}

/// Where a key's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file.
    File,
    /// A `STRATA_*` variable.
    Env,
    /// A flag.
    Flag,
}

/// The argument list with the file's and the environment's values added as flags, and the
/// source of every key set.
#[derive(Debug)]
pub struct Layered {
    /// What to parse.
    pub argv: Vec<OsString>,
    /// Per key set by something other than its default.
    pub sources: BTreeMap<String, Source>,
}

/// Adds to `argv` the settings of the configuration file (`--config`/`STRATA_CONFIG`) and
/// of `STRATA_<KEY>` variables, for the keys the command takes and its flags do not set.
/// Commands without `--config` (batch, eval, ...) are left as they are: the environment's
/// settings are for the serving commands only. An argument list clap refuses is returned
/// unchanged, for clap to report.
///
/// # Errors
/// [`ConfigError`] for an unreadable or invalid file, an unknown key, or a value the key's
/// flag refuses.
pub fn layer(argv: Vec<OsString>) -> Result<Layered, ConfigError> {
    let unchanged = |argv| Ok(Layered { argv, sources: BTreeMap::new() });
    let mut cli = Cli::command();
    cli.build();
    let matches = match cli.clone().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        Err(error) => {
            // A STRATA_* variable that clap reads itself and refuses: name the variable, not a
            // flag the user never typed.
            if let Some(refused) = refused_variable(&error) {
                return Err(refused);
            }
            return unchanged(argv);
        }
    };
    // The innermost subcommand (`dead-letters list`) holds the arguments.
    let (mut command, mut found) = (&cli, &matches);
    while let Some((name, sub)) = found.subcommand() {
        match command.find_subcommand(name) {
            Some(next) => (command, found) = (next, sub),
            None => break,
        }
    }
    // Only the Kafka commands take settings (`--config` of `model init` is a model config).
    if command.get_arguments().all(|arg| arg.get_id() != "config_file") {
        return unchanged(argv);
    }
    warn_misspelt_variables();
    let path = found.get_one::<PathBuf>("config_file").cloned();
    let file = match &path {
        Some(path) => read_file(path)?,
        None => toml::Table::new(),
    };

    let mut extra: Vec<OsString> = Vec::new();
    let mut sources = BTreeMap::new();
    for arg in command.get_arguments().filter(|arg| is_key(arg)) {
        let key = arg.get_id().as_str();
        match found.value_source(key) {
            Some(ValueSource::CommandLine) => {
                sources.insert(key.to_owned(), Source::Flag);
                continue;
            }
            Some(ValueSource::EnvVariable) => {
                sources.insert(key.to_owned(), Source::Env);
                continue;
            }
            _ => {}
        }
        let env = env_name(key);
        let (origin, values, source) = match (std::env::var_os(&env), file.get(key)) {
            // clap reads the variables it declares itself (above).
            (Some(value), _) if arg.get_env().is_none() => {
                (format!("environment variable {env}"), vec![value.to_string_lossy().into_owned()], Source::Env)
            }
            (_, Some(value)) => {
                let origin = path.as_ref().map_or_else(String::new, |p| p.display().to_string());
                let values = toml_values(key, value, matches!(arg.get_action(), ArgAction::Append)).map_err(|reason| {
                    ConfigError::Value { origin: origin.clone(), key: key.to_owned(), value: value.to_string(), reason }
                })?;
                (origin, values, Source::File)
            }
            _ => continue,
        };
        let long = arg.get_long().unwrap_or(key);
        for value in values {
            if let Err(error) = check_value(arg, &value) {
                return Err(ConfigError::Value { origin, key: key.to_owned(), value: format!("{value:?}"), reason: clap_reason(&error) });
            }
            match arg.get_action() {
                ArgAction::SetTrue => {
                    if value == "true" {
                        extra.push(format!("--{long}").into());
                    }
                }
                _ => extra.push(format!("--{long}={value}").into()),
            }
        }
        sources.insert(key.to_owned(), source);
    }
    for key in file.keys() {
        if !keys().iter().any(|k| &k.key == key) {
            let path = path.clone().unwrap_or_default();
            return Err(ConfigError::UnknownKey { path, key: key.clone(), hint: hint(key) });
        }
    }
    // After a literal `--` everything is positional: the flags go before it.
    let mut argv = argv;
    let at = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.splice(at..at, extra);
    Ok(Layered { argv, sources })
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    text.parse::<toml::Table>().map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
}

/// The flag values a TOML value stands for: one scalar, or for a repeatable key an array of
/// them or a table of KEY = VALUE pairs.
fn toml_values(key: &str, value: &toml::Value, repeatable: bool) -> Result<Vec<String>, String> {
    let scalar = |value: &toml::Value| match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => Err(format!("`{key}` takes a single value, not a list or table")),
    };
    match value {
        toml::Value::Array(items) if repeatable => items.iter().map(scalar).collect(),
        toml::Value::Table(pairs) if repeatable => pairs.iter().map(|(k, v)| Ok(format!("{k}={}", scalar(v)?))).collect(),
        other => scalar(other).map(|s| vec![s]),
    }
}

/// The `STRATA_*` variable behind a clap error about a flag the command line did not give.
fn refused_variable(error: &clap::Error) -> Option<ConfigError> {
    let text = error.to_string();
    let argv: Vec<String> = std::env::args().collect();
    serve_command().get_arguments().filter(|arg| is_key(arg) && arg.get_env().is_some()).find_map(|arg| {
        let long = format!("--{}", arg.get_long()?);
        let env = arg.get_env()?.to_string_lossy().into_owned();
        let value = std::env::var(&env).ok()?;
        let named = text.contains(&format!("'{long}"));
        let typed = argv.iter().any(|a| a == &long || a.starts_with(&format!("{long}=")));
        let refused = check_value(arg, &value).err()?;
        (named && !typed).then(|| ConfigError::Value {
            origin: format!("environment variable {env}"),
            key: arg.get_id().as_str().to_owned(),
            value: format!("{value:?}"),
            reason: clap_reason(&refused),
        })
    })
}

/// Parses `value` with the flag's own parser (a command holding only that flag).
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), clap::Error> {
    let long = arg.get_long().unwrap_or_default();
    let args: Vec<String> = match arg.get_action() {
        ArgAction::SetTrue if value == "false" => vec!["check".into()],
        ArgAction::SetTrue if value == "true" => vec!["check".into(), format!("--{long}")],
        _ => vec!["check".into(), format!("--{long}={value}")],
    };
    let probe = arg.clone().required(false);
    clap::Command::new("check").arg(probe).try_get_matches_from(args).map(|_| ())
}

/// clap's reason without its "error: " prefix and usage lines, with the possible values of
/// an enum when clap lists them.
fn clap_reason(error: &clap::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
    match text.lines().find(|l| l.contains("[possible values:")) {
        Some(values) => format!("{first} {}", values.trim()),
        None => first.to_owned(),
    }
}

/// " (did you mean `x`?)" for the known key closest to a misspelt one.
fn hint(key: &str) -> String {
    keys()
        .into_iter()
        .map(|k| (edit_distance(key, &k.key), k.key))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// `STRATA_*` variables that are no key but close to one (`STRATA_BATCHSIZE`): a warning, since
/// the value is otherwise silently ignored. Variables far from every key (tooling such as
/// `STRATA_CACHE`) stay quiet.
fn warn_misspelt_variables() {
    let known: Vec<String> = keys().into_iter().map(|k| k.env).chain(ENVIRONMENT.iter().map(|(env, _)| (*env).to_owned())).collect();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if known.iter().any(|k| *k == name) {
            continue;
        }
        let rest = rest.to_lowercase();
        // Two edits at most: a typo, not another tool's variable (`STRATA_BIN` is not `ef`).
        let close = keys().into_iter().map(|k| (edit_distance(&rest, &k.key), k.key)).filter(|(d, _)| *d <= 2 && rest.len() >= 4).min();
        if let Some((_, key)) = close {
            eprintln!(
                "warning: the environment variable {name} is not a setting and is ignored (did you mean {ENV_PREFIX}{}?)",
                key.to_uppercase()
            );
        }
    }
}

/// Levenshtein distance, for the hint only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `strata config check` and `strata config keys`.
///
/// # Errors
/// When the output cannot be written.
pub fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Keys(args) => print_keys(&args),
        ConfigCommand::Check(args) => check(&args),
    }
}

fn print_keys(args: &ConfigKeysArgs) -> anyhow::Result<ExitCode> {
    let keys = keys();
    match args.format {
        KeysFormat::Json => {
            let environment: Vec<_> = ENVIRONMENT.iter().map(|(env, help)| serde_json::json!({ "env": env, "help": help })).collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "keys": keys, "environment": environment }))?);
        }
        KeysFormat::Text => {
            let width = keys.iter().map(|k| k.env.len()).max().unwrap_or(0);
            println!("{:<width$}  {:<width$}  DEFAULT / MEANING", "KEY", "ENVIRONMENT");
            for k in &keys {
                let default = k.default.as_deref().map_or_else(|| "(none)".to_owned(), |d| format!("{d:?}"));
                let list = if k.repeatable { " (list)" } else { "" };
                let deploy = if k.deploy_required { " (set it when deploying)" } else { "" };
                println!("{:<width$}  {:<width$}  {default}{list}{deploy}\n{:<w2$}{}", k.key, k.env, "", k.help, w2 = 2 * width + 4);
            }
            println!("\nAlso read from the environment:");
            for (env, help) in ENVIRONMENT {
                println!("  {env:<width$}{help}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A flag value as it would be written in the TOML file: numbers and booleans bare, the rest
/// quoted, so `config check` output can be pasted back into a configuration.
fn toml_literal(value: &str) -> String {
    let bare = value.parse::<i64>().is_ok() || value.parse::<f64>().is_ok_and(f64::is_finite) || value == "true" || value == "false";
    if bare {
        value.to_owned()
    } else {
        toml::Value::String(value.to_owned()).to_string()
    }
}

/// Parses a configuration as `strata serve` would, runs the checks that need no network, and
/// prints every key's effective value and source. Exit status 2 when it is refused.
fn check(args: &ConfigCheckArgs) -> anyhow::Result<ExitCode> {
    let mut argv: Vec<OsString> = vec!["strata".into(), "serve".into()];
    if let Some(path) = &args.config {
        argv.extend(["--config".into(), path.clone().into_os_string()]);
    }
    let refused = |message: String| {
        eprintln!("error: {message}");
        Ok(ExitCode::from(2))
    };
    let layered = match layer(argv) {
        Ok(layered) => layered,
        Err(error) => return refused(error.to_string()),
    };
    let mut cli = Cli::command();
    let matches = match cli.try_get_matches_from_mut(&layered.argv) {
        Ok(matches) => matches,
        Err(error) => return refused(clap_reason(&error)),
    };
    let serve = match Cli::from_arg_matches(&matches).map(|cli| cli.command) {
        Ok(Command::Serve(serve)) => serve,
        Ok(_) => return refused("not a serve configuration".into()),
        Err(error) => return refused(clap_reason(&error)),
    };
    let mut problems = Vec::new();
    if serve.listen != "off" {
        if let Err(error) = serve.listen.parse::<std::net::SocketAddr>() {
            problems.push(format!("`listen` = {:?}: not host:port or `off` ({error})", serve.listen));
        }
    }
    for (key, location) in [("tables", &serve.tables), ("tiles", &serve.tiles)] {
        if let Err(error) = storage::resolve(location) {
            problems.push(format!("`{key}` = {location:?}: {error}"));
        }
    }
    if serve.model.is_some() && serve.model_registry.is_some() {
        problems.push("`model` and `model_registry` are both set: give one (a fixed artifact, or the registry's serving version)".into());
    }
    if let Some(model) = &serve.model {
        let local = !model.contains("://");
        if local && !Path::new(model).join("manifest.json").is_file() {
            problems.push(format!("`model` = {model:?}: no model artifact there (no manifest.json)"));
        }
    }
    if serve.kafka.brokers.split(',').any(|b| b.trim().rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err())) {
        problems.push(format!("`brokers` = {:?}: expected host:port[,host:port...]", serve.kafka.brokers));
    }
    let serve_matches = matches.subcommand_matches("serve");
    println!("# effective configuration of `strata serve` (source after each value)");
    for key in keys() {
        let source = layered.sources.get(&key.key).copied().unwrap_or(Source::Default);
        let values: Vec<String> = serve_matches
            .and_then(|m| m.get_raw(&key.key))
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let shown = match (values.as_slice(), key.repeatable) {
            ([], _) => "(unset)".to_owned(),
            (values, true) => format!("[{}]", values.iter().map(|v| toml_literal(v)).collect::<Vec<_>>().join(", ")),
            ([one, ..], false) => toml_literal(one),
        };
        println!("{} = {shown}  # {}", key.key, serde_json::to_value(source)?.as_str().unwrap_or_default());
    }
    if problems.is_empty() {
        eprintln!("configuration OK");
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        Ok(ExitCode::from(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_flag_is_a_key_with_a_strata_variable() {
        let keys = keys();
        for expected in ["brokers", "batch_size", "model", "listen", "kafka_options", "log_format", "drain_timeout", "role"] {
            assert!(keys.iter().any(|k| k.key == expected), "{expected} missing from {keys:?}");
        }
        assert!(keys.iter().all(|k| k.env == format!("STRATA_{}", k.key.to_uppercase())));
        assert!(!keys.iter().any(|k| NOT_KEYS.contains(&k.key.as_str())));
        // Where clap reads a variable itself, it must be the same name.
        for arg in serve_command().get_arguments().filter(|a| is_key(a)) {
            if let Some(env) = arg.get_env() {
                assert_eq!(env.to_string_lossy(), env_name(arg.get_id().as_str()), "{}", arg.get_id());
            }
        }
    }

    #[test]
    fn toml_values_become_flag_values() {
        assert_eq!(toml_values("batch_size", &toml::Value::Integer(8), false).unwrap(), ["8"]);
        let table: toml::Table = "a = { \"batch.num.messages\" = 1, \"acks\" = \"all\" }".parse().unwrap();
        let mut pairs = toml_values("kafka_options", &table["a"], true).unwrap();
        pairs.sort();
        assert_eq!(pairs, ["acks=all", "batch.num.messages=1"]);
        assert!(toml_values("brokers", &toml::Value::Array(vec![]), false).unwrap_err().contains("single value"));
    }

    #[test]
    fn a_misspelt_key_gets_a_hint() {
        assert_eq!(hint("bach_size"), " (did you mean `batch_size`?)");
        assert_eq!(hint("completely_else"), "");
    }
}

//! `strata`: turns satellite scenes into captions, classes, answers and detections.
//!
//! Exit codes: 0 success, 1 the command ran but some inputs failed (see the summary and the
//! dead-letter table), 2 the command could not run (bad arguments, configuration, setup).

use std::process::ExitCode;

use clap::Parser;

mod batch;
mod cli;
mod config;
mod data_cmd;
mod eval_cmd;
mod index_cmd;
mod info;
mod map;
mod model_cmd;
mod query;
mod retriever;
mod serve;
mod train_cmd;

fn main() -> ExitCode {
    // Settings from --config and STRATA_* variables become flags before clap parses.
    let layered = match config::layer(std::env::args_os().collect()) {
        Ok(layered) => layered,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let args = cli::Cli::parse_from(layered.argv);
    init_tracing(args.verbose, args.log_format);
    operators::tile::route_gdal_messages();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", causes(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once: library errors that quote their cause in their
/// own message (`"{action}: {source}"`, as thiserror's `#[source]` fields do) are not followed
/// by that cause again, as anyhow's `{:#}` would print it.
fn causes(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
    }
    text
}

fn run(args: cli::Cli) -> anyhow::Result<ExitCode> {
    if let cli::Command::Query(query_args) = &args.command {
        query::set_display_options(query_args);
    }
    // libtorch's pool is sized once, when the first model is placed on a device: `--threads`
    // sizes it where a command takes it, the CPUs this process may use elsewhere.
    let threads = match &args.command {
        cli::Command::Batch(batch_args) => batch_args.threads,
        cli::Command::Serve(serve_args) => serve_args.threads,
        _ => None,
    };
    if let Some(threads) = threads {
        model::device::request_cpu_threads(threads);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    match args.command {
        cli::Command::Batch(batch_args) => runtime.block_on(batch::run(batch_args)),
        cli::Command::Query(query_args) => runtime.block_on(query::run(query_args)),
        cli::Command::Map(map_args) => runtime.block_on(map::run(map_args)),
        cli::Command::Tables(command) => runtime.block_on(query::tables(command)),
        cli::Command::Info(info_args) => info::run(&info_args),
        cli::Command::Model(command) => model_cmd::run(command, &runtime),
        cli::Command::Eval(eval_args) => eval_cmd::run(eval_args),
        cli::Command::Index(command) => index_cmd::run(command, &runtime),
        cli::Command::Data(command) => data_cmd::run(command),
        cli::Command::Train(command) => train_cmd::run(command),
        cli::Command::Serve(serve_args) => runtime.block_on(serve::run(serve_args)),
        cli::Command::Submit(submit_args) => runtime.block_on(serve::submit(submit_args)),
        cli::Command::DeadLetters(args) => runtime.block_on(serve::dead_letters::run(args)),
        cli::Command::Status(args) => runtime.block_on(serve::status::run(args)),
        cli::Command::Config(command) => config::run(command),
    }
}

fn init_tracing(verbose: u8, format: cli::LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or collector would get escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        cli::LogFormat::Text => logs.init(),
        // The current span's fields (scene, tile) on every line, for log collectors.
        cli::LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_quoted_by_its_error_is_not_printed_twice() {
        #[derive(Debug, thiserror::Error)]
        #[error("index `/x`: cannot read")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("opening --index: {source}")]
        struct Outer {
            #[source]
            source: Inner,
        }
        let err = anyhow::Error::new(Outer { source: Inner }).context("loading the chain");
        assert_eq!(super::causes(&err), "loading the chain: opening --index: index `/x`: cannot read");
        let plain = anyhow::anyhow!("no model").context("batch");
        assert_eq!(super::causes(&plain), "batch: no model");
    }
}

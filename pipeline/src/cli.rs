//! Command-line surface. Every subcommand's help says what it does, with an example.

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

    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what this installation can do: devices, native libraries, schema version, tables.
    ///
    /// Example: strata info --device auto
    Info(InfoArgs),
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

//! `strata train align|instruct|retriever --config FILE`: the flags become
//! [`train::RunOptions`], the `train` crate runs the job, and its outcome is printed.

use std::process::ExitCode;

use model::train::Stage;

use crate::cli::{TrainArgs, TrainCommand};

/// `strata train ...`.
///
/// # Errors
/// As [`train::vlm::run`] and [`train::retriever::run`].
pub fn run(command: TrainCommand) -> anyhow::Result<ExitCode> {
    let outcome = match command {
        TrainCommand::Align(args) => train::vlm::run(Stage::Alignment, &args.config, &options(&args))?,
        TrainCommand::Instruct(args) => train::vlm::run(Stage::InstructionTuning, &args.config, &options(&args))?,
        TrainCommand::Retriever(args) => train::retriever::run(&args.config, &options(&args))?,
    };
    println!("{outcome}");
    Ok(ExitCode::SUCCESS)
}

fn options(args: &TrainArgs) -> train::RunOptions {
    train::RunOptions { device: args.device, resume: args.resume, stop_after: args.stop_after, progress: !args.no_progress }
}

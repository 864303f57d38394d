//! `strata data synth`: the flags become [`synth::layout::LayoutSettings`], the `synth` crate
//! writes the data set, and what it wrote is printed.

use std::process::ExitCode;

use crate::cli::{DataCommand, SynthArgs};

/// `strata data ...`.
///
/// # Errors
/// As [`synth::layout::write`].
pub fn run(command: DataCommand) -> anyhow::Result<ExitCode> {
    match command {
        DataCommand::Synth(args) => synth_command(&args),
    }
}

fn synth_command(args: &SynthArgs) -> anyhow::Result<ExitCode> {
    let settings = synth::layout::LayoutSettings {
        out: args.out.clone(),
        n: args.n,
        seed: args.seed,
        size: args.size,
        test_fraction: args.test_fraction,
        scenes: args.scenes,
        scene_grid: args.scene_grid,
        progress: !args.no_progress,
    };
    let written = synth::layout::write(&settings)?;
    println!(
        "wrote {} scenes to {} ({} train, {} test; {} classes, seed {})",
        args.n,
        args.out.display(),
        written.train,
        written.test,
        synth::CLASSES.len(),
        args.seed
    );
    Ok(ExitCode::SUCCESS)
}

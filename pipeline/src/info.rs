//! `strata info`: a self-check an operator runs first on a new machine or container.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::InfoArgs;

pub fn run(args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let mut healthy = true;
    println!("strata {}", env!("CARGO_PKG_VERSION"));
    println!("message schema version: {}", schemas::SCHEMA_VERSION);

    let device = model::device::select(args.device).context("selecting the compute device")?;
    println!("device: {}", device.describe());
    println!("model precision: {} (--precision auto|f32|bf16)", device.describe_precision());
    println!("libtorch: ok (probe sum = {})", device.probe().context("running a libtorch probe on the device")?);

    match model::onnx::environment() {
        Ok(_) => {
            println!("onnxruntime: ok ({})", model::onnx::library_path().map(|p| p.display().to_string()).unwrap_or_default());
            match model::onnx::cuda_fallback_reason() {
                Ok(None) => println!("onnxruntime encoders: cuda:0"),
                Ok(Some(reason)) => println!("onnxruntime encoders: cpu ({reason})"),
                Err(err) => {
                    healthy = false;
                    println!("onnxruntime encoders: unavailable: {err}");
                }
            }
        }
        Err(err) => {
            healthy = false;
            println!("onnxruntime: unavailable: {err}");
        }
    }
    println!("gdal: {}", operators::tile::gdal_version());

    if args.tables {
        for table in schemas::tables::ALL {
            println!("\ntable `{}`: {}", table.name, table.doc);
            for column in table.columns {
                let null = if column.nullable { " (nullable)" } else { "" };
                println!("  {:<16} {:<16} {}{null}", column.name, format!("{:?}", column.ty), column.doc);
            }
        }
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

//! `strata query`: SQL over the result tables.

use std::process::ExitCode;

use anyhow::Context as _;
use operators::geometry::Gdal;
use tables::{query, Tables};

use crate::cli::QueryArgs;

/// polars' table printer reads its limits from the environment; they are set here, before the
/// async runtime starts any thread, because changing the environment while other threads run
/// is not safe.
pub fn set_display_options(args: &QueryArgs) {
    std::env::set_var("POLARS_FMT_MAX_ROWS", args.max_rows.to_string());
    std::env::set_var("POLARS_FMT_STR_LEN", "48");
    if std::env::var_os("POLARS_TABLE_WIDTH").is_none() {
        let width = std::env::var("COLUMNS").ok().and_then(|c| c.parse::<u16>().ok()).unwrap_or(160);
        std::env::set_var("POLARS_TABLE_WIDTH", width.to_string());
    }
    std::env::set_var("POLARS_FMT_MAX_COLS", "40");
}

pub async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let tables = Tables::new(storage::resolve(&args.tables).context("resolving --tables")?);
    let frame = query::run(&tables, &args.sql).await?;
    println!("{}", query::render(frame, args.format, &Gdal)?);
    Ok(ExitCode::SUCCESS)
}

//! `strata query`: SQL over the result tables.

use std::process::ExitCode;

use anyhow::Context as _;
use operators::geometry::Gdal;
use tables::{query, Tables};

use crate::cli::{QueryArgs, TablesCommand};

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

/// The tables at `--tables`, for reading: a local folder that does not exist is refused (an
/// object-store prefix cannot be told apart from an empty one, so it reads as empty tables).
///
/// # Errors
/// An unusable URL, or a local folder that is not there.
pub fn open_tables(location: &str) -> anyhow::Result<Tables> {
    let root = storage::resolve(location).context("resolving --tables")?;
    if let Some(path) = root.local_path() {
        if !path.exists() {
            anyhow::bail!(
                "`{location}` does not exist\nhint: --tables is the folder (or URL) `strata batch` or `strata serve` wrote the tables to"
            );
        }
        if !path.is_dir() {
            anyhow::bail!("`{location}` is a file\nhint: --tables is the folder holding the tables (tiles/, scenes/, ...)");
        }
        if path.join("_delta_log").is_dir() {
            anyhow::bail!(
                "`{location}` is one table, not the folder of the tables\nhint: use its parent, --tables {}",
                path.parent().map_or_else(|| ".".to_owned(), |p| p.display().to_string())
            );
        }
    }
    Ok(Tables::new(root))
}

pub async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let tables = open_tables(&args.tables)?;
    let frame = query::run(&tables, &args.sql).await?;
    println!("{}", query::render(frame, args.format, &Gdal)?);
    Ok(ExitCode::SUCCESS)
}

/// `strata tables …`.
pub async fn tables(command: TablesCommand) -> anyhow::Result<ExitCode> {
    match command {
        TablesCommand::Migrate(args) => {
            let tables = open_tables(&args.tables)?;
            let migrated = tables
                .migrate(&Gdal, |m| match (m.already, m.files) {
                    (true, _) => println!("{:<16} already a Delta table", m.table),
                    (false, 0) => println!("{:<16} nothing to migrate", m.table),
                    (false, files) => println!("{:<16} {files} files, {} rows committed", m.table, m.rows),
                })
                .await
                .context("migrating the tables (run it again to finish: migrated tables are skipped)")?;
            let rows: u64 = migrated.iter().map(|m| m.rows).sum();
            println!("migrated {} tables, {rows} rows, at {}", migrated.iter().filter(|m| m.files > 0).count(), tables.root().url());
            Ok(ExitCode::SUCCESS)
        }
        TablesCommand::Compact(args) => {
            let tables = open_tables(&args.tables.tables)?;
            let retention = std::time::Duration::from_secs(args.retain_hours.saturating_mul(3600));
            let done = tables
                .compact(args.target_mib.saturating_mul(1024 * 1024), Some(retention), &Gdal, |c| {
                    println!(
                        "{:<16} {} files -> {} ({} written{}), {} old files deleted",
                        c.table,
                        c.files_before,
                        c.files_after,
                        c.written,
                        if c.conflicts > 0 {
                            format!(", {} left for next time: another writer changed them", c.conflicts)
                        } else {
                            String::new()
                        },
                        c.vacuumed
                    )
                })
                .await
                .context("compacting the tables")?;
            let (before, after): (usize, usize) = done.iter().fold((0, 0), |(b, a), c| (b + c.files_before, a + c.files_after));
            println!("{before} files -> {after} at {}", tables.root().url());
            Ok(ExitCode::SUCCESS)
        }
    }
}

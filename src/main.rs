use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit status: the run completed, but some entries could not be archived or restored.
const EXIT_SKIPPED: u8 = 3;

/// Archive container checkpoints as aligned tar files whose data is shared, not copied.
#[derive(Parser)]
#[command(name = "ckpt", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the contents of a directory to an aligned tar archive.
    Export {
        /// Align file data to N bytes (power of two, >= 512) [default: the larger of 4096 and
        /// the archive filesystem's block size]
        #[arg(long, value_name = "N")]
        align: Option<u64>,
        /// Copy every byte instead of sharing extents with the source.
        #[arg(long)]
        no_clone: bool,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// The directory to archive.
        src: PathBuf,
        /// The archive to write.
        out: PathBuf,
    },
    /// Restore an archive (ckpt's or any tar) into a directory.
    Import {
        /// Copy every byte instead of sharing extents with the archive.
        #[arg(long)]
        no_clone: bool,
        /// Replace existing entries (by unlink and rename, never by writing into them).
        #[arg(long)]
        overwrite: bool,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// The archive to read.
        archive: PathBuf,
        /// The directory to restore into (created if missing).
        dest: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ckpt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> ckpt::Result<ExitCode> {
    match cli.command {
        Command::Export { align, no_clone, json, src, out } => {
            let mut exporter = ckpt::Exporter::new().share(!no_clone);
            if let Some(align) = align {
                exporter = exporter.align(align);
            }
            let stats = exporter.export(&src, &out)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "entries": stats.entries,
                        "files": stats.files,
                        "bytes": stats.bytes,
                        "bytes_cloned": stats.bytes_cloned,
                        "bytes_copied": stats.bytes_copied,
                        "archive_bytes": stats.archive_bytes,
                        "align": stats.align,
                        "seconds": stats.seconds,
                        "skipped": stats.skipped.len(),
                    })
                );
            }
            Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
        }
        Command::Import { no_clone, overwrite, json, archive, dest } => {
            let stats =
                ckpt::Importer::new().share(!no_clone).overwrite(overwrite).import(&archive, &dest)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "entries": stats.entries,
                        "files": stats.files,
                        "bytes": stats.bytes,
                        "bytes_cloned": stats.bytes_cloned,
                        "bytes_copied": stats.bytes_copied,
                        "seconds": stats.seconds,
                        "skipped": stats.skipped.len(),
                        "conflicts": stats.conflicts.len(),
                        "refused": stats.refused.len(),
                    })
                );
            }
            if !stats.conflicts.is_empty() || !stats.refused.is_empty() {
                eprintln!(
                    "ckpt: import incomplete: {} existing entries left untouched, {} members refused",
                    stats.conflicts.len(),
                    stats.refused.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
        }
    }
}

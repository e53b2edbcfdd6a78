use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Exit status: the run completed, but some entries could not be archived or restored.
const EXIT_SKIPPED: u8 = 3;

/// Archive container checkpoints as aligned tar files whose data is shared, not copied.
///
/// Exit status: 0 success, 1 failure, 2 usage error, 3 completed but some entries were
/// skipped (sockets, device nodes without privilege, unknown member types).
#[derive(Parser)]
#[command(name = "ckpt", version)]
struct Cli {
    /// Print errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print more (-v: info, -vv: debug). RUST_LOG overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a directory (or a container checkpoint bundle) to an aligned tar archive.
    Export(ExportArgs),
    /// Restore an archive (ckpt's or any tar, optionally gzip or zstd compressed).
    Import(ImportArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// Align file data to N bytes (power of two, >= 512) [default: the larger of 4096 and the
    /// archive filesystem's block size].
    #[arg(long, value_name = "N", value_parser = parse_align)]
    align: Option<u64>,
    /// Copy every byte instead of sharing extents with the source.
    #[arg(long)]
    no_clone: bool,
    /// Treat SRC as a checkpoint bundle and write podman's layout (implied by --rootfs and
    /// --rootfs-diff).
    #[arg(long)]
    bundle: bool,
    #[command(flatten)]
    rootfs: RootfsArgs,
    /// Lower dir of --rootfs-diff (repeatable, topmost first); needed to list what opaque
    /// directories hide.
    #[arg(long, value_name = "DIR", requires = "rootfs_diff")]
    lower: Vec<PathBuf>,
    /// How deletions in the rootfs changes are recorded.
    #[arg(long, value_enum, default_value = "podman")]
    whiteouts: Whiteouts,
    /// Compress the archive. Compressed data cannot be shared with the source, so the archive
    /// is written as a stream and its alignment no longer matters.
    #[arg(long, value_enum, value_name = "FORMAT")]
    compress: Option<CompressArg>,
    /// Print a JSON summary on stdout (on stderr when the archive goes to stdout).
    #[arg(long)]
    json: bool,
    /// The directory to archive.
    src: PathBuf,
    /// The archive to write; `-` for standard output (a pipe: written as a stream).
    out: PathBuf,
}

#[derive(Args)]
#[group(multiple = false)]
struct RootfsArgs {
    /// The container's overlay mount point: its upper (diff) dir holds the rootfs changes.
    #[arg(long, value_name = "PATH")]
    rootfs: Option<PathBuf>,
    /// A layer's diff (upper) dir holding the rootfs changes.
    #[arg(long, value_name = "DIR")]
    rootfs_diff: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Whiteouts {
    /// deleted.files beside rootfs-diff.tar, as podman writes.
    Podman,
    /// .wh.NAME and .wh..wh..opq entries inside rootfs-diff.tar, as in OCI layers.
    Oci,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressArg {
    Gzip,
    Zstd,
}

#[derive(Args)]
struct ImportArgs {
    /// Copy every byte instead of sharing extents with the archive.
    #[arg(long)]
    no_clone: bool,
    /// Replace existing entries (by unlink and rename, never by writing into them).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    rootfs: RootfsArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// The archive to read (gzip and zstd are detected); `-` for standard input.
    archive: PathBuf,
    /// The directory to restore into (created if missing).
    dest: PathBuf,
}

fn parse_align(value: &str) -> Result<u64, String> {
    let n: u64 = value.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n >= 512 { Ok(n) } else { Err("must be a power of two, at least 512".into()) }
}

impl RootfsArgs {
    fn rootfs(&self, lowers: &[PathBuf]) -> Option<ckpt::Rootfs> {
        match (&self.rootfs, &self.rootfs_diff) {
            (Some(path), _) => Some(ckpt::Rootfs::Mount(path.clone())),
            (_, Some(upper)) => Some(ckpt::Rootfs::Diff { upper: upper.clone(), lowers: lowers.to_vec() }),
            _ => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|out, record| {
            use std::io::Write;
            let level = record.level().as_str().to_lowercase();
            writeln!(out, "ckpt: {level}: {}", record.args())
        })
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ckpt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> ckpt::Result<ExitCode> {
    match command {
        Command::Export(args) => export(args),
        Command::Import(args) => import(args),
    }
}

fn export(args: ExportArgs) -> ckpt::Result<ExitCode> {
    let mut exporter = ckpt::Exporter::new().share(!args.no_clone).bundle_layout(args.bundle).whiteouts(
        match args.whiteouts {
            Whiteouts::Podman => ckpt::WhiteoutStyle::Podman,
            Whiteouts::Oci => ckpt::WhiteoutStyle::Oci,
        },
    );
    if let Some(align) = args.align {
        exporter = exporter.align(align);
    }
    if let Some(rootfs) = args.rootfs.rootfs(&args.lower) {
        exporter = exporter.rootfs(rootfs);
    }
    exporter = exporter.compress(args.compress.map(|c| match c {
        CompressArg::Gzip => ckpt::Compression::Gzip,
        CompressArg::Zstd => ckpt::Compression::Zstd,
    }));
    let stats = exporter.export(&args.src, &args.out)?;
    if args.json {
        let summary = serde_json::json!({
                "entries": stats.entries,
                "files": stats.files,
                "bytes": stats.bytes,
                "bytes_cloned": stats.bytes_cloned,
                "bytes_copied": stats.bytes_copied,
                "archive_bytes": stats.archive_bytes,
                "align": stats.align,
                "seconds": stats.seconds,
                "skipped": stats.skipped.len(),
        });
        if args.out.as_os_str() == "-" {
            eprintln!("{summary}");
        } else {
            println!("{summary}");
        }
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

fn import(args: ImportArgs) -> ckpt::Result<ExitCode> {
    let mut importer = ckpt::Importer::new().share(!args.no_clone).overwrite(args.overwrite);
    if let Some(rootfs) = args.rootfs.rootfs(&[]) {
        importer = importer.rootfs(rootfs);
    }
    let stats = importer.import(&args.archive, &args.dest)?;
    if args.json {
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

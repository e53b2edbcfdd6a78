use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
    /// List an archive's members with their data offsets and alignment (reads headers only).
    List(ListArgs),
    /// Check an archive: headers, end-of-archive blocks, alignment, and its ckpt.sha256 digests.
    ///
    /// Exit status 0 when every header is sound, the archive is complete, and (when it carries
    /// a ckpt.sha256 manifest) every regular member's data matches its digest; 1 otherwise,
    /// naming each bad member.
    Verify(VerifyArgs),
    /// OCI runtime hook: read the container state JSON on stdin and export or import its
    /// checkpoint as its io.ckpt.* annotations say.
    #[command(long_about = hook_about())]
    Hook,
    /// Checkpoint and restore podman containers, moving their data by cloning.
    ///
    /// Runs `podman` from PATH (or $CKPT_PODMAN) with the caller's environment, so podman's
    /// own configuration applies (containers.conf, storage.conf, CONTAINERS_CONF, ...).
    #[command(subcommand)]
    Podman(PodmanCommand),
    /// Print a shell completion script (e.g. `ckpt completions bash > /etc/bash_completion.d/ckpt`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), of ckpt or of one command (`ckpt man export | man -l -`).
    Man {
        /// The command whose page to print (ckpt-COMMAND(1)).
        command: Option<String>,
    },
}

/// `ckpt hook --help`: the annotations, from the library's table.
fn hook_about() -> String {
    let mut about = String::from(
        "OCI runtime hook: read the container state JSON on stdin and export or import its \
         checkpoint as its io.ckpt.* annotations say ({id} in a path is the container's id):\n",
    );
    for (name, value, meaning) in ckpt::HOOK_ANNOTATIONS {
        about.push_str(&format!("\n  {name}={value}\n      {meaning}"));
    }
    about.push_str("\n\nWithout io.ckpt.export or io.ckpt.import it does nothing and exits 0.");
    about
}

#[derive(Subcommand)]
enum PodmanCommand {
    /// Checkpoint a running container into an archive in podman's layout (restorable by
    /// `podman container restore --import` and `ckpt podman restore`), data cloned.
    Checkpoint(PodmanCheckpointArgs),
    /// Restore an archive (ckpt's or podman's own) into a new container made as the
    /// archive's config.dump says, or with --into roll its own container back to it.
    Restore(PodmanRestoreArgs),
}

#[derive(Args)]
struct PodmanCheckpointArgs {
    /// Leave the container running after its checkpoint.
    #[arg(long)]
    leave_running: bool,
    /// Keep what podman wrote into the container's userdata dir (CRIU's log, config.dump,
    /// spec.dump, stats-dump); checkpoint/ is kept either way, as podman keeps it.
    #[arg(long)]
    keep: bool,
    /// Checkpoint established TCP connections.
    #[arg(long)]
    tcp_established: bool,
    /// Checkpoint file locks.
    #[arg(long)]
    file_locks: bool,
    /// Copy every byte instead of sharing extents with the container's files.
    #[arg(long)]
    no_clone: bool,
    /// Compress the archive (then written as a stream: compressed data cannot be shared).
    #[arg(long, value_enum, value_name = "FORMAT")]
    compress: Option<CompressArg>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// The container (name or ID).
    container: String,
    /// The archive to write (mode 0600).
    out: PathBuf,
}

#[derive(Args)]
struct PodmanRestoreArgs {
    /// The new container's name [default: the checkpointed container's].
    #[arg(long, conflicts_with = "into")]
    name: Option<String>,
    /// Roll this existing, stopped container back to the archive (its own checkpoint):
    /// its checkpoint and rootfs changes are replaced by the archive's.
    #[arg(long, value_name = "CONTAINER")]
    into: Option<String>,
    /// Restore established TCP connections.
    #[arg(long)]
    tcp_established: bool,
    /// Restore file locks.
    #[arg(long)]
    file_locks: bool,
    /// Copy every byte instead of sharing extents with the archive.
    #[arg(long)]
    no_clone: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// The checkpoint archive (gzip and zstd are detected).
    archive: PathBuf,
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
    /// Copy files smaller than SIZE instead of cloning them (K, M, G suffixes: powers of
    /// 1024). Each clone splits the archive's own writes around a shared extent, which costs
    /// more than copying a few blocks; 0 clones every file with a whole block.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16K")]
    clone_min: u64,
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
    /// Add a last member ckpt.sha256 with the digest of every regular member, in sha256sum
    /// format (`ckpt verify` checks it; so does `sha256sum -c` after extraction). Reads all data.
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    digest: Option<DigestArg>,
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
enum DigestArg {
    Sha256,
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

#[derive(Args)]
struct ListArgs {
    /// One JSON object per member and line: name, type, typeflag, mode (octal string), uid,
    /// gid, size, mtime, mtime_nsec, header_offset, data_offset, aligned, xattrs (names),
    /// link, dev_major/dev_minor, nested_in.
    #[arg(long)]
    json: bool,
    /// Also list the members of a nested rootfs-diff.tar, named `rootfs-diff.tar/NAME`, with
    /// offsets in the outer archive.
    #[arg(long)]
    nested: bool,
    /// The boundary alignment is reported against.
    #[arg(long, value_name = "N", value_parser = parse_align, default_value_t = ckpt::DEFAULT_ALIGN)]
    align: u64,
    /// The archive (gzip and zstd are detected; offsets are in the uncompressed stream); `-`
    /// for standard input.
    archive: PathBuf,
}

#[derive(Args)]
struct VerifyArgs {
    /// The boundary alignment is reported against.
    #[arg(long, value_name = "N", value_parser = parse_align, default_value_t = ckpt::DEFAULT_ALIGN)]
    align: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// The archive (gzip and zstd are detected); `-` for standard input.
    archive: PathBuf,
}

fn parse_size(value: &str) -> Result<u64, String> {
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        Some(b'G' | b'g') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {value:?} (e.g. 16K, 1M, 4096)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("too large: {value}"))
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
    let progress = !cli.quiet && std::io::stderr().is_terminal();
    match run(cli.command, progress) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ckpt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, progress: bool) -> ckpt::Result<ExitCode> {
    match command {
        Command::Export(args) => export(args, progress),
        Command::Import(args) => import(args, progress),
        Command::List(args) => list(args),
        Command::Verify(args) => verify(args, progress),
        Command::Hook => hook(),
        Command::Podman(PodmanCommand::Checkpoint(args)) => podman_checkpoint(args, progress),
        Command::Podman(PodmanCommand::Restore(args)) => podman_restore(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ckpt", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command } => man(command.as_deref()),
    }
}

/// A progress bar on stderr, in bytes.
struct Bar(ProgressBar);

impl Bar {
    fn new(message: &'static str) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(spinner_style());
        bar.set_message(message);
        Bar(bar)
    }

    fn set_total(&self, total: Option<u64>) {
        match total {
            Some(total) if self.0.length() != Some(total) => {
                self.0.set_length(total);
                self.0.set_style(bar_style());
            }
            Some(_) => {}
            None if self.0.length().is_some() => {
                self.0.unset_length();
                self.0.set_style(spinner_style());
            }
            None => {}
        }
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg:7} [{wide_bar}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} eta {eta:3}",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg:7} {bytes:>10} {binary_bytes_per_sec:>12} {elapsed}")
        .expect("a valid template")
}

impl ckpt::Progress for Bar {
    fn start(&self, total: u64) {
        self.set_total(Some(total));
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn export(args: ExportArgs, progress: bool) -> ckpt::Result<ExitCode> {
    let mut exporter = ckpt::Exporter::new()
        .share(!args.no_clone)
        .clone_min(args.clone_min)
        .bundle_layout(args.bundle)
        .whiteouts(match args.whiteouts {
            Whiteouts::Podman => ckpt::WhiteoutStyle::Podman,
            Whiteouts::Oci => ckpt::WhiteoutStyle::Oci,
        });
    if let Some(align) = args.align {
        exporter = exporter.align(align);
    }
    if let Some(rootfs) = args.rootfs.rootfs(&args.lower) {
        exporter = exporter.rootfs(rootfs);
    }
    exporter = exporter.compress(args.compress.map(compression));
    if args.digest.is_some() {
        exporter = exporter.digest(true);
    }
    if progress {
        exporter = exporter.progress(Arc::new(Bar::new("export")));
    }
    let stats = exporter.export(&args.src, &args.out)?;
    if args.json {
        let summary = export_summary(&stats);
        if args.out.as_os_str() == "-" {
            eprintln!("{summary}");
        } else {
            println!("{summary}");
        }
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

fn podman_checkpoint(args: PodmanCheckpointArgs, progress: bool) -> ckpt::Result<ExitCode> {
    let mut exporter = ckpt::Exporter::new().share(!args.no_clone).compress(args.compress.map(compression));
    if progress {
        exporter = exporter.progress(Arc::new(Bar::new("export")));
    }
    let options = ckpt::CheckpointOptions {
        leave_running: args.leave_running,
        keep: args.keep,
        tcp_established: args.tcp_established,
        file_locks: args.file_locks,
    };
    let report = ckpt::Podman::new().checkpoint(&args.container, &args.out, exporter, &options)?;
    let stats = &report.export;
    if args.json {
        println!("{}", with_podman(export_summary(stats), &report.container, report.podman_seconds));
    } else {
        log::info!("{}: checkpointed to {}", report.container, args.out.display());
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

fn podman_restore(args: PodmanRestoreArgs) -> ckpt::Result<ExitCode> {
    let target = match args.into {
        Some(container) => ckpt::RestoreTarget::Existing(container),
        None => ckpt::RestoreTarget::New { name: args.name },
    };
    let options = ckpt::RestoreOptions {
        tcp_established: args.tcp_established,
        file_locks: args.file_locks,
        share: !args.no_clone,
    };
    let report = ckpt::Podman::new().restore(&args.archive, &target, &options)?;
    let stats = &report.import;
    if args.json {
        println!("{}", with_podman(import_summary(stats), &report.container, report.podman_seconds));
    } else {
        println!("{}", report.container);
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

/// `--json` of an export: what was archived and how much of it was shared.
fn export_summary(stats: &ckpt::ExportStats) -> serde_json::Value {
    serde_json::json!({
        "entries": stats.entries,
        "files": stats.files,
        "bytes": stats.bytes,
        "bytes_cloned": stats.bytes_cloned,
        "bytes_copied": stats.bytes_copied,
        "archive_bytes": stats.archive_bytes,
        "tar_bytes": stats.tar_bytes,
        "align": stats.align,
        "seconds": stats.seconds,
        "skipped": stats.skipped.len(),
    })
}

/// `--json` of an import: what was restored, and what was not.
fn import_summary(stats: &ckpt::ImportStats) -> serde_json::Value {
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
        "failed": stats.failed.len(),
    })
}

/// A summary of `ckpt podman`: the export's or import's, with the container and the seconds
/// podman took.
fn with_podman(mut summary: serde_json::Value, container: &str, podman_seconds: f64) -> serde_json::Value {
    summary["container"] = container.into();
    summary["podman_seconds"] = podman_seconds.into();
    summary
}

fn compression(arg: CompressArg) -> ckpt::Compression {
    match arg {
        CompressArg::Gzip => ckpt::Compression::Gzip,
        CompressArg::Zstd => ckpt::Compression::Zstd,
    }
}

fn import(args: ImportArgs, progress: bool) -> ckpt::Result<ExitCode> {
    let mut importer = ckpt::Importer::new().share(!args.no_clone).overwrite(args.overwrite);
    if let Some(rootfs) = args.rootfs.rootfs(&[]) {
        importer = importer.rootfs(rootfs);
    }
    if progress {
        importer = importer.progress(Arc::new(Bar::new("import")));
    }
    let stats = importer.import(&args.archive, &args.dest)?;
    if args.json {
        println!("{}", import_summary(&stats));
    }
    if !stats.conflicts.is_empty() || !stats.refused.is_empty() || !stats.failed.is_empty() {
        eprintln!(
            "ckpt: import incomplete: {} existing entries left untouched, {} members refused, {} failed",
            stats.conflicts.len(),
            stats.refused.len(),
            stats.failed.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

fn list(args: ListArgs) -> ckpt::Result<ExitCode> {
    let options = ckpt::ListOptions { nested: args.nested, align: args.align };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = ckpt::list(&args.archive, &options, &mut |entry| {
        // Through a Value, whose map sorts the keys as `ckpt list --json` always has.
        let json = || serde_json::to_value(entry).expect("a list entry serializes").to_string();
        let line = if args.json { json() } else { entry.text_line() };
        writeln!(out, "{line}").map_err(|e| ckpt::Error::io("write", "standard output", e))
    });
    let result =
        result.and_then(|()| out.flush().map_err(|e| ckpt::Error::io("write", "standard output", e)));
    match result {
        // `ckpt list x.tar | head` is not an error.
        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn verify(args: VerifyArgs, progress: bool) -> ckpt::Result<ExitCode> {
    let bar = progress.then(|| Bar::new("verify"));
    let mut phase = "";
    let report = ckpt::verify(&args.archive, args.align, &mut |p: ckpt::VerifyProgress| {
        if let Some(bar) = &bar {
            if p.phase != phase {
                // A new pass: its own length, rate and estimate.
                phase = p.phase;
                bar.0.reset();
                bar.0.set_message(if phase == "headers" { "headers" } else { "verify" });
            }
            bar.set_total(p.total);
            bar.0.set_position(p.done);
        }
    });
    if let Some(bar) = &bar {
        bar.0.finish_and_clear();
    }
    let report = report?;
    let archive = args.archive.display();
    for problem in &report.problems {
        eprintln!("ckpt: verify: {archive}: {problem}");
    }
    if args.json {
        // A Value sorts the keys, as `ckpt verify --json` always has; `ok` is computed.
        let mut json = serde_json::to_value(&report).expect("a verify report serializes");
        json["ok"] = report.ok().into();
        println!("{json}");
    } else if !log::log_enabled!(log::Level::Warn) {
        // -q: the problems only.
    } else {
        let nested = if report.nested_members > 0 {
            format!(" (and {} in rootfs-diff.tar)", report.nested_members)
        } else {
            String::new()
        };
        println!("{archive}: {} members{nested}, {} regular files with data", report.members, report.files);
        println!(
            "{archive}: {} of {} files of {} bytes or more start on a {}-byte boundary",
            report.aligned_files, report.large_files, report.align, report.align
        );
        for name in report.unaligned.iter().take(10) {
            println!("{archive}:   unaligned: {name}");
        }
        if report.unaligned.len() > 10 {
            println!("{archive}:   ... and {} more unaligned", report.unaligned.len() - 10);
        }
        match &report.manifest {
            Some(manifest) => match report.digests_checked {
                1 => println!("{archive}: {manifest}: 1 digest matches"),
                n => println!("{archive}: {manifest}: {n} digests match"),
            },
            None if !report.complete => println!("{archive}: data not checked: the archive is damaged"),
            None => println!("{archive}: no ckpt.sha256 manifest: data not checked"),
        }
        match report.problems.len() {
            0 => println!("{archive}: OK"),
            1 => println!("{archive}: FAILED: 1 problem"),
            n => println!("{archive}: FAILED: {n} problems"),
        }
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn hook() -> ckpt::Result<ExitCode> {
    let state = ckpt::HookState::read(std::io::stdin().lock())?;
    match ckpt::run_hook(&state, None)? {
        ckpt::HookOutcome::Nothing(why) => log::info!("hook: container {}: {why}", state.id),
        ckpt::HookOutcome::Exported { archive, stats } => {
            log::info!(
                "hook: container {}: exported {} to {} ({} of {} bytes shared)",
                state.id,
                state.bundle.display(),
                archive.display(),
                stats.bytes_cloned,
                stats.bytes
            );
            if !stats.skipped.is_empty() {
                log::warn!(
                    "hook: container {}: {} entries could not be archived",
                    state.id,
                    stats.skipped.len()
                );
            }
        }
        ckpt::HookOutcome::Imported { archive, dest, stats } => {
            log::info!(
                "hook: container {}: imported {} into {} ({} of {} bytes shared)",
                state.id,
                archive.display(),
                dest.display(),
                stats.bytes_cloned,
                stats.bytes
            );
            if !stats.skipped.is_empty() {
                log::warn!(
                    "hook: container {}: {} members could not be restored",
                    state.id,
                    stats.skipped.len()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn man(command: Option<&str>) -> ckpt::Result<ExitCode> {
    let mut cli = Cli::command();
    cli.build();
    let page = match command {
        None => cli,
        Some(name) => match cli.find_subcommand(name) {
            Some(sub) => {
                let title = format!("ckpt-{}", sub.get_name());
                sub.clone().name(&*Box::leak(title.into_boxed_str()))
            }
            None => {
                eprintln!("ckpt: man: no command {name:?}");
                return Ok(ExitCode::from(2));
            }
        },
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out).map_err(|e| ckpt::Error::io("render", "man page", e))?;
    std::io::stdout().write_all(&out).map_err(|e| ckpt::Error::io("write", "standard output", e))?;
    Ok(ExitCode::SUCCESS)
}

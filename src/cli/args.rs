//! The command line: every command, option and argument, with its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Archive container checkpoints as aligned tar files whose data is shared, not copied.
///
/// Exit status: 0 success, 1 failure, 2 usage error, 3 completed but some entries were
/// skipped (sockets, device nodes without privilege, unknown member types).
#[derive(Parser)]
#[command(name = "ckpt", version)]
pub(crate) struct Cli {
    /// Print errors only.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// Print more (-v: info, -vv: debug). RUST_LOG overrides both.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// Push a checkpoint (archive or bundle) to a registry or an OCI layout as an image whose
    /// unchanged files are the same layers as before; prints the manifest digest.
    Push(crate::cli::registry::PushArgs),
    /// Pull a checkpoint image into an aligned ckpt archive (or restore it with --import),
    /// downloading only the layers the local store lacks; prints the manifest digest.
    Pull(crate::cli::registry::PullArgs),
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
pub(crate) fn hook_about() -> String {
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
pub(crate) enum PodmanCommand {
    /// Checkpoint a running container into an archive in podman's layout (restorable by
    /// `podman container restore --import` and `ckpt podman restore`), data cloned.
    Checkpoint(PodmanCheckpointArgs),
    /// Restore an archive (ckpt's or podman's own) into a new container made as the
    /// archive's config.dump says, or with --into roll its own container back to it.
    Restore(PodmanRestoreArgs),
}

#[derive(Args)]
pub(crate) struct PodmanCheckpointArgs {
    /// Leave the container running after its checkpoint.
    #[arg(long)]
    pub(crate) leave_running: bool,
    /// Keep what podman wrote into the container's userdata dir (CRIU's log, config.dump,
    /// spec.dump, stats-dump); checkpoint/ is kept either way, as podman keeps it.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Checkpoint established TCP connections.
    #[arg(long)]
    pub(crate) tcp_established: bool,
    /// Checkpoint file locks.
    #[arg(long)]
    pub(crate) file_locks: bool,
    /// Leave the contents of the container's named volumes out of the archive (podman's
    /// export carries each as volumes/NAME.tar, and so does ckpt's by default).
    #[arg(long)]
    pub(crate) ignore_volumes: bool,
    /// Copy every byte instead of sharing extents with the container's files.
    #[arg(long)]
    pub(crate) no_clone: bool,
    /// Compress the archive (then written as a stream: compressed data cannot be shared).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) compress: Option<CompressArg>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// The container (name or ID).
    pub(crate) container: String,
    /// The archive to write (mode 0600).
    pub(crate) out: PathBuf,
}

#[derive(Args)]
pub(crate) struct PodmanRestoreArgs {
    /// The new container's name [default: the checkpointed container's].
    #[arg(long, conflicts_with = "into")]
    pub(crate) name: Option<String>,
    /// Roll this existing, stopped container back to the archive (its own checkpoint):
    /// its checkpoint and rootfs changes are replaced by the archive's.
    #[arg(long, value_name = "CONTAINER")]
    pub(crate) into: Option<String>,
    /// Restore established TCP connections.
    #[arg(long)]
    pub(crate) tcp_established: bool,
    /// Restore file locks.
    #[arg(long)]
    pub(crate) file_locks: bool,
    /// Use the new container's named volumes as they are (created empty when missing)
    /// instead of putting the archive's volumes/NAME.tar back into them.
    #[arg(long, conflicts_with = "into")]
    pub(crate) ignore_volumes: bool,
    /// Copy every byte instead of sharing extents with the archive.
    #[arg(long)]
    pub(crate) no_clone: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// The checkpoint archive (gzip and zstd are detected).
    pub(crate) archive: PathBuf,
}

#[derive(Args)]
pub(crate) struct ExportArgs {
    /// Align file data to N bytes (power of two, >= 512) [default: the larger of 4096 and the
    /// archive filesystem's block size].
    #[arg(long, value_name = "N", value_parser = parse_align)]
    pub(crate) align: Option<u64>,
    /// Copy every byte instead of sharing extents with the source.
    #[arg(long)]
    pub(crate) no_clone: bool,
    /// Copy files smaller than SIZE instead of cloning them (K, M, G suffixes: powers of
    /// 1024). Each clone splits the archive's own writes around a shared extent, which costs
    /// more than copying a few blocks; 0 clones every file with a whole block.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "16K")]
    pub(crate) clone_min: u64,
    /// Treat SRC as a checkpoint bundle and write podman's layout (implied by --rootfs,
    /// --rootfs-diff and --volume).
    #[arg(long)]
    pub(crate) bundle: bool,
    #[command(flatten)]
    pub(crate) rootfs: RootfsArgs,
    /// Lower dir of --rootfs-diff (repeatable, topmost first); needed to list what opaque
    /// directories hide.
    #[arg(long, value_name = "DIR", requires = "rootfs_diff")]
    pub(crate) lower: Vec<PathBuf>,
    /// A named volume's contents, as volumes/NAME.tar, the way podman's export carries them
    /// (repeatable; implies --bundle).
    #[arg(long, value_name = "NAME=DIR", value_parser = parse_volume)]
    pub(crate) volume: Vec<(String, PathBuf)>,
    /// How deletions in the rootfs changes are recorded.
    #[arg(long, value_enum, default_value = "podman")]
    pub(crate) whiteouts: Whiteouts,
    /// Compress the archive. Compressed data cannot be shared with the source, so the archive
    /// is written as a stream and its alignment no longer matters.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub(crate) compress: Option<CompressArg>,
    /// Add a last member ckpt.sha256 with the digest of every regular member, in sha256sum
    /// format (`ckpt verify` checks it; so does `sha256sum -c` after extraction). Reads all data.
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub(crate) digest: Option<DigestArg>,
    /// Print a JSON summary on stdout (on stderr when the archive goes to stdout).
    #[arg(long)]
    pub(crate) json: bool,
    /// The directory to archive.
    pub(crate) src: PathBuf,
    /// The archive to write; `-` for standard output (a pipe: written as a stream).
    pub(crate) out: PathBuf,
}

#[derive(Args)]
#[group(multiple = false)]
pub(crate) struct RootfsArgs {
    /// The container's overlay mount point: its upper (diff) dir holds the rootfs changes.
    #[arg(long, value_name = "PATH")]
    pub(crate) rootfs: Option<PathBuf>,
    /// A layer's diff (upper) dir holding the rootfs changes.
    #[arg(long, value_name = "DIR")]
    pub(crate) rootfs_diff: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Whiteouts {
    /// deleted.files beside rootfs-diff.tar, as podman writes.
    Podman,
    /// .wh.NAME and .wh..wh..opq entries inside rootfs-diff.tar, as in OCI layers.
    Oci,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DigestArg {
    Sha256,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum CompressArg {
    Gzip,
    Zstd,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    /// Copy every byte instead of sharing extents with the archive.
    #[arg(long)]
    pub(crate) no_clone: bool,
    /// Replace existing entries (by unlink and rename, never by writing into them).
    #[arg(long)]
    pub(crate) overwrite: bool,
    #[command(flatten)]
    pub(crate) rootfs: RootfsArgs,
    /// Restore the checkpoint's volumes/NAME.tar into DIR, the volume's directory, instead of
    /// as a file (repeatable).
    #[arg(long, value_name = "NAME=DIR", value_parser = parse_volume)]
    pub(crate) volume: Vec<(String, PathBuf)>,
    /// Threads decoding a seekable zstd archive (ckpt's --compress zstd) ahead of the
    /// extraction. Default: $CKPT_JOBS, else the number of cores up to 4.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub(crate) jobs: Option<u32>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// The archive to read (gzip and zstd are detected); `-` for standard input.
    pub(crate) archive: PathBuf,
    /// The directory to restore into (created if missing).
    pub(crate) dest: PathBuf,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    /// One JSON object per member and line: name, type, typeflag, mode (octal string), uid,
    /// gid, size (as stored), file_size (restored, holes included), mtime, mtime_nsec,
    /// header_offset, data_offset, aligned, xattrs (names), link, dev_major/dev_minor,
    /// nested_in.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also list the members of the nested archives (rootfs-diff.tar, volumes/NAME.tar), named
    /// `rootfs-diff.tar/NAME`, with offsets in the outer archive.
    #[arg(long)]
    pub(crate) nested: bool,
    /// The boundary alignment is reported against.
    #[arg(long, value_name = "N", value_parser = parse_align, default_value_t = ckpt::DEFAULT_ALIGN)]
    pub(crate) align: u64,
    /// The archive (gzip and zstd are detected; offsets are in the uncompressed stream); `-`
    /// for standard input.
    pub(crate) archive: PathBuf,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The boundary alignment is reported against.
    #[arg(long, value_name = "N", value_parser = parse_align, default_value_t = ckpt::DEFAULT_ALIGN)]
    pub(crate) align: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    /// Check the headers only: no digests compared, and of a seekable zstd archive only its
    /// index is read.
    #[arg(long)]
    pub(crate) headers: bool,
    /// The archive (gzip and zstd are detected); `-` for standard input.
    pub(crate) archive: PathBuf,
}

pub(crate) fn parse_size(value: &str) -> Result<u64, String> {
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'K' | b'k') => (&value[..value.len() - 1], 10),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        Some(b'G' | b'g') => (&value[..value.len() - 1], 30),
        _ => (value, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {value:?} (e.g. 16K, 1M, 4096)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("too large: {value}"))
}

fn parse_volume(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name.to_string(), dir.into())),
        _ => Err(format!("{text:?}: expected NAME=DIR")),
    }
}

pub(crate) fn parse_align(value: &str) -> Result<u64, String> {
    let n: u64 = value.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n >= 512 { Ok(n) } else { Err("must be a power of two, at least 512".into()) }
}

impl RootfsArgs {
    pub(crate) fn rootfs(&self, lowers: &[PathBuf]) -> Option<ckpt::Rootfs> {
        match (&self.rootfs, &self.rootfs_diff) {
            (Some(path), _) => Some(ckpt::Rootfs::Mount(path.clone())),
            (_, Some(upper)) => Some(ckpt::Rootfs::Diff { upper: upper.clone(), lowers: lowers.to_vec() }),
            _ => None,
        }
    }
}

pub(crate) fn compression(arg: CompressArg) -> ckpt::Compression {
    match arg {
        CompressArg::Gzip => ckpt::Compression::Gzip,
        CompressArg::Zstd => ckpt::Compression::Zstd,
    }
}

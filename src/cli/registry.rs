//! `ckpt push` and `ckpt pull`: their options and what they print.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::cli::summary::summary;

#[derive(Args)]
pub(crate) struct AccessArgs {
    /// Verify the registry's TLS certificate; false speaks plain HTTP (as podman spells it).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) tls_verify: bool,
    /// USER:PASS for the registry (ahead of any auth file).
    #[arg(long, value_name = "USER:PASS")]
    pub(crate) creds: Option<String>,
    /// An auth file (podman's auth.json format) [default: $REGISTRY_AUTH_FILE,
    /// $XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json,
    /// ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    pub(crate) authfile: Option<PathBuf>,
    /// The local content-addressed layer store [default: $XDG_CACHE_HOME/ckpt (else
    /// ~/.cache/ckpt) when on the mount of SRC, OUT or DEST, else .ckpt-store-UID at the top
    /// of that mount, so that layers are cloned, not copied].
    #[arg(long, value_name = "DIR")]
    pub(crate) store: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct PushArgs {
    #[command(flatten)]
    pub(crate) access: AccessArgs,
    /// Print bytes_uploaded, blobs_uploaded, blobs_skipped, blobs_mounted, seconds and digest
    /// as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// A ckpt or podman checkpoint archive, or a checkpoint bundle directory.
    pub(crate) src: PathBuf,
    /// HOST[:PORT]/REPO[:TAG] or oci:DIR[:TAG].
    pub(crate) reference: String,
}

#[derive(Args)]
pub(crate) struct PullArgs {
    #[command(flatten)]
    pub(crate) access: AccessArgs,
    /// Restore into this directory instead of writing an archive (as `ckpt import`).
    #[arg(long, value_name = "DEST", conflicts_with = "out", required_unless_present = "out")]
    pub(crate) import: Option<PathBuf>,
    /// With --import: copy every byte instead of sharing extents with the store.
    #[arg(long, requires = "import")]
    pub(crate) no_clone: bool,
    /// With --import: replace existing entries.
    #[arg(long, requires = "import")]
    pub(crate) overwrite: bool,
    /// With --import: restore the rootfs changes into this layer's diff (upper) dir.
    #[arg(long, value_name = "DIR", requires = "import")]
    pub(crate) rootfs_diff: Option<PathBuf>,
    /// Print bytes_downloaded, blobs_downloaded, blobs_reused, seconds and digest as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// HOST[:PORT]/REPO[:TAG|@DIGEST] or oci:DIR[:TAG].
    pub(crate) reference: String,
    /// The aligned ckpt archive to write (mode 0600).
    pub(crate) out: Option<PathBuf>,
}

fn registry(args: &AccessArgs) -> ckpt::Registry {
    let access = ckpt::Access {
        plain_http: !args.tls_verify,
        creds: args.creds.clone(),
        authfile: args.authfile.clone(),
    };
    let registry = ckpt::Registry::new().access(access);
    match &args.store {
        Some(store) => registry.store(store),
        None => registry,
    }
}

pub(crate) fn push(args: PushArgs) -> ckpt::Result<ExitCode> {
    let reference = ckpt::Reference::parse(&args.reference)?;
    let stats = registry(&args.access).push(&args.src, &reference, ckpt::Exporter::new())?;
    if args.json {
        println!("{}", summary(&stats));
    } else {
        println!("{}", stats.digest);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn pull(args: PullArgs) -> ckpt::Result<ExitCode> {
    let reference = ckpt::Reference::parse(&args.reference)?;
    let registry = registry(&args.access);
    let stats = match (&args.import, &args.out) {
        (Some(dest), _) => {
            let mut importer = ckpt::Importer::new().share(!args.no_clone).overwrite(args.overwrite);
            if let Some(upper) = &args.rootfs_diff {
                importer = importer.rootfs(ckpt::Rootfs::Diff { upper: upper.clone(), lowers: vec![] });
            }
            let (stats, imported) = registry.pull_import(&reference, dest, importer)?;
            if crate::cli::commands::incomplete(&imported) {
                return Ok(ExitCode::FAILURE);
            }
            stats
        }
        (None, Some(out)) => registry.pull(&reference, out)?,
        (None, None) => unreachable!("clap requires OUT or --import"),
    };
    if args.json {
        println!("{}", summary(&stats));
    } else {
        println!("{}", stats.digest);
    }
    Ok(ExitCode::SUCCESS)
}

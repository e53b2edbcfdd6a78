//! What each command does: the library call, and what is printed and returned.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::CommandFactory;

use crate::cli::args::*;
use crate::cli::bar::Bar;
use crate::cli::summary::{summary, with_podman};

/// Exit status: the run completed, but some entries could not be archived or restored.
const EXIT_SKIPPED: u8 = 3;

pub(crate) fn export(args: ExportArgs, progress: bool) -> ckpt::Result<ExitCode> {
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
    for (name, dir) in args.volume {
        exporter = exporter.volume(name, dir);
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
        let summary = summary(&stats);
        if args.out.as_os_str() == "-" {
            eprintln!("{summary}");
        } else {
            println!("{summary}");
        }
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

pub(crate) fn podman_checkpoint(args: PodmanCheckpointArgs, progress: bool) -> ckpt::Result<ExitCode> {
    let mut exporter = ckpt::Exporter::new().share(!args.no_clone).compress(args.compress.map(compression));
    if progress {
        exporter = exporter.progress(Arc::new(Bar::new("export")));
    }
    let options = ckpt::CheckpointOptions {
        leave_running: args.leave_running,
        keep: args.keep,
        tcp_established: args.tcp_established,
        file_locks: args.file_locks,
        ignore_volumes: args.ignore_volumes,
    };
    let report = ckpt::Podman::new().checkpoint(&args.container, &args.out, exporter, &options)?;
    let stats = &report.export;
    if args.json {
        println!("{}", with_podman(summary(stats), &report.container, report.podman_seconds));
    } else {
        log::info!("{}: checkpointed to {}", report.container, args.out.display());
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

pub(crate) fn podman_restore(args: PodmanRestoreArgs) -> ckpt::Result<ExitCode> {
    let target = match args.into {
        Some(container) => ckpt::RestoreTarget::Existing(container),
        None => ckpt::RestoreTarget::New { name: args.name },
    };
    let options = ckpt::RestoreOptions {
        tcp_established: args.tcp_established,
        file_locks: args.file_locks,
        share: !args.no_clone,
        ignore_volumes: args.ignore_volumes,
    };
    let report = ckpt::Podman::new().restore(&args.archive, &target, &options)?;
    let stats = &report.import;
    if args.json {
        println!("{}", with_podman(summary(stats), &report.container, report.podman_seconds));
    } else {
        println!("{}", report.container);
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

pub(crate) fn import(args: ImportArgs, progress: bool) -> ckpt::Result<ExitCode> {
    let mut importer = ckpt::Importer::new().share(!args.no_clone).overwrite(args.overwrite);
    if let Some(rootfs) = args.rootfs.rootfs(&[]) {
        importer = importer.rootfs(rootfs);
    }
    for (name, dir) in &args.volume {
        importer = importer.volume(name, dir);
    }
    if let Some(jobs) = args.jobs {
        importer = importer.jobs(jobs as usize);
    }
    if progress {
        importer = importer.progress(Arc::new(Bar::new("import")));
    }
    let stats = importer.import(&args.archive, &args.dest)?;
    if args.json {
        println!("{}", summary(&stats));
    }
    if incomplete(&stats) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(if stats.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_SKIPPED) })
}

pub(crate) fn list(args: ListArgs) -> ckpt::Result<ExitCode> {
    let options = ckpt::ListOptions { nested: args.nested, align: args.align };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = ckpt::list(&args.archive, &options, &mut |entry| {
        // Through a Value, whose map sorts the keys as `ckpt list --json` always has.
        let json = || serde_json::to_value(entry).expect("a list entry serializes").to_string();
        let line = if args.json { json() } else { entry.text_line() };
        writeln!(out, "{line}").map_err(|e| ckpt::Error::io("write", "/dev/stdout", e))
    });
    let result = result.and_then(|()| out.flush().map_err(|e| ckpt::Error::io("write", "/dev/stdout", e)));
    match result {
        // `ckpt list x.tar | head` is not an error.
        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

pub(crate) fn verify(args: VerifyArgs, progress: bool) -> ckpt::Result<ExitCode> {
    let bar = progress.then(|| Bar::new("verify"));
    let mut phase = "";
    let verify = if args.headers { ckpt::verify_headers } else { ckpt::verify };
    let report = verify(&args.archive, args.align, &mut |p: ckpt::VerifyProgress| {
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
            Some(manifest) if args.headers => {
                println!("{archive}: {manifest}: headers only, digests not checked")
            }
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

pub(crate) fn hook() -> ckpt::Result<ExitCode> {
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

pub(crate) fn man(command: Option<&str>) -> ckpt::Result<ExitCode> {
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
    clap_mangen::Man::new(page).render(&mut out).expect("rendering into memory cannot fail");
    std::io::stdout().write_all(&out).map_err(|e| ckpt::Error::io("write", "/dev/stdout", e))?;
    Ok(ExitCode::SUCCESS)
}

/// Whether an import left entries or members out, which fails the command; says so on stderr.
pub(crate) fn incomplete(stats: &ckpt::ImportStats) -> bool {
    let incomplete = !stats.conflicts.is_empty() || !stats.refused.is_empty() || !stats.failed.is_empty();
    if incomplete {
        eprintln!(
            "ckpt: import incomplete: {} existing entries left untouched, {} members refused, {} failed",
            stats.conflicts.len(),
            stats.refused.len(),
            stats.failed.len()
        );
    }
    incomplete
}

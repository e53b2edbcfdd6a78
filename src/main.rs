//! `ckpt`: the command line. Everything it does is a library call (see src/cli/).

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::args::{Cli, Command, PodmanCommand};
use cli::commands::*;

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
    // A hook's runtime treats any status but 0 and 1 as a broken hook.
    let is_hook = matches!(cli.command, Command::Hook);
    match run(cli.command, progress) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ckpt: {e}");
            if e.kind() == ckpt::ErrorKind::Usage && !is_hook { ExitCode::from(2) } else { ExitCode::FAILURE }
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
        Command::Push(args) => cli::registry::push(args),
        Command::Pull(args) => cli::registry::pull(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ckpt", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { command } => man(command.as_deref()),
    }
}

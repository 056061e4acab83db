use std::process::ExitCode;

use blockwire::cli::{Cli, Command};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Serve(args) => blockwire::serve::prepare().and_then(|prepared| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(blockwire::serve::run(args, prepared))
        }),
        Command::Info(args) => blockwire::tools::block_on(blockwire::tools::info::run(args)),
        Command::Daemon(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(blockwire::daemon::run(args))),
        Command::Copy(args) => blockwire::tools::block_on(blockwire::tools::copy::run(args)),
    };
    // The runtime, and with it the graph, is gone: RBD images are closing.
    blockwire::block::drivers::rbd::wait_closed();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blockwire: {e}");
            ExitCode::FAILURE
        }
    }
}

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

/// Fixes glibc's mmap threshold at 4 MiB. Left dynamic, it rises to the
/// size of any large block freed (up to 32 MiB), and blocks below it then
/// come from the heap, where `calloc` must write its zeroes: a RAM disk's
/// allocation map or a dirty bitmap of 4 to 32 MiB (a 1 to 32 TiB disk)
/// would be resident from the start instead of page by page as written
/// (`benches/scale`, `tests/tests/serve_scale.rs`). Smaller maps are small;
/// I/O buffers above 4 MiB are rare and worth a fresh mapping anyway.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; called first thing
    // in main, before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() {}

fn main() -> ExitCode {
    fix_mmap_threshold();
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

//! SIGINT / SIGTERM: the first asks for a graceful stop (stop accepting,
//! finish in-flight requests, flush, exit 0), a second one exits at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::warn;

/// Sets `stop` to `true` on the first signal; exits the process on the
/// second.
pub fn install(stop: watch::Sender<bool>) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        for n in 0.. {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            if n == 0 {
                warn!("{name}: shutting down (again to exit at once)");
                let _ = stop.send(true);
            } else {
                warn!("{name}: exiting now");
                std::process::exit(1);
            }
        }
    });
    Ok(())
}

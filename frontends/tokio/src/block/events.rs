//! Events the graph raises, for whoever listens (the QMP monitor sends
//! them to every client; `serve` logs them).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Events kept for a listener that is behind, before it starts losing the
/// oldest. The channel allocates every slot up front, so each holds an
/// `Arc` (a word) rather than the event: 1024 events inline were 112 KiB
/// of every server's idle memory.
const BACKLOG: usize = 1024;

/// One event, with QEMU's names for its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `BLOCK_WRITE_THRESHOLD`: a write reached past a node's threshold
    /// (which is then disarmed: the event fires once).
    WriteThreshold {
        node_name: String,
        amount_exceeded: u64,
        write_threshold: u64,
    },
    /// `BLOCK_IO_ERROR`: a request failed on a node an export uses.
    IoError {
        node_name: String,
        /// `read` or `write`.
        operation: &'static str,
        /// The error was ENOSPC.
        nospace: bool,
        reason: String,
    },
    /// `BLOCK_EXPORT_DELETED`: an export is gone (its last client left).
    ExportDeleted { id: String },
}

/// An event and when it happened (wall clock, as QMP's `timestamp`).
#[derive(Clone, Debug)]
pub struct Stamped {
    pub at: SystemTime,
    pub event: Event,
}

/// The graph's event channel; cheap to clone.
#[derive(Clone, Debug)]
pub struct Events {
    tx: broadcast::Sender<Arc<Stamped>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Events {
    pub fn send(&self, event: Event) {
        tracing::info!(?event, "block event");
        // No listener is not an error: the event is only logged.
        let _ = self.tx.send(Arc::new(Stamped {
            at: SystemTime::now(),
            event,
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Stamped>> {
        self.tx.subscribe()
    }
}

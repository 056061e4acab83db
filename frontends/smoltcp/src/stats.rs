//! Counters a server keeps, for diagnostics and for tests that check the
//! shape of the traffic (e.g. that reads go out in few large chunks).

/// Totals since the server was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Handshakes that reached transmission.
    pub sessions: u64,
    /// Transmission requests handled.
    pub requests: u64,
    /// Read reply headers sent (simple replies, data and hole chunks).
    pub read_chunks: u64,
    /// Read data bytes put into sockets.
    pub read_bytes: u64,
    /// Write payload bytes stored.
    pub written_bytes: u64,
}

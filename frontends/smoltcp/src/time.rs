//! Between smoltcp's clock (microseconds) and the core's (nanoseconds).

use blockwire_core::time::Instant as CoreInstant;
use smoltcp::time::Instant;

/// The core's view of a smoltcp instant; times before the epoch count as 0.
pub fn to_core(t: Instant) -> CoreInstant {
    CoreInstant::from_nanos((t.total_micros().max(0) as u64).saturating_mul(1000))
}

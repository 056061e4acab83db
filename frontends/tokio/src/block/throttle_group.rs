//! A throttle group (QEMU's `throttle-group` object): one set of limits
//! shared by every `throttle` node that names it, so that together they
//! stay within them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use blockwire_core::block::throttle::{Admission, Direction, Throttle, ThrottleLimits};

use super::node::lock;

pub struct ThrottleGroup {
    id: String,
    throttle: Mutex<Throttle>,
    epoch: Instant,
}

impl ThrottleGroup {
    pub fn new(id: &str, limits: ThrottleLimits) -> Result<Self, String> {
        Ok(Self {
            id: id.to_owned(),
            throttle: Mutex::new(Throttle::new(limits).map_err(|e| e.to_string())?),
            epoch: Instant::now(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn limits(&self) -> ThrottleLimits {
        *lock(&self.throttle).limits()
    }

    /// `block_set_io_throttle` / `qom-set limits`: new limits, empty buckets.
    pub fn set_limits(&self, limits: ThrottleLimits) -> Result<(), String> {
        lock(&self.throttle)
            .set_limits(limits)
            .map_err(|e| e.to_string())
    }

    /// Waits until the group admits a request of `bytes`.
    pub async fn admitted(&self, dir: Direction, bytes: u64) {
        while let Some(wait) = self.admit(dir, bytes) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Admits a request of `bytes` now (and accounts it), or says how long
    /// to wait before asking again.
    pub fn admit(&self, dir: Direction, bytes: u64) -> Option<Duration> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        match lock(&self.throttle).try_start(now, dir, bytes) {
            Admission::Start => None,
            Admission::NotBefore(at) => Some(Duration::from_nanos(at.saturating_sub(now).max(1))),
        }
    }
}

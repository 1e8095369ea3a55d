//! The clocks, injected so tests can move them.
//!
//! Two readings: the wall clock (UTC), which records carry and deadlines are written
//! in — deadlines must survive a restart, and only the wall clock means the same
//! thing before and after one — and a monotonic clock, which never jumps. The
//! scheduler fires deadlines by the wall clock, but never further ahead than the
//! monotonic clock has really run (see `scheduler::FiringClock`), so stepping the
//! system clock never expires an order early.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::model::Timestamp;

pub trait Clock: Send + Sync + 'static {
    /// The wall clock: milliseconds since the Unix epoch, UTC. It can jump.
    fn now(&self) -> Timestamp;
    /// Milliseconds since an arbitrary origin on a clock that never jumps.
    fn monotonic_ms(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }
    fn monotonic_ms(&self) -> i64 {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as i64
    }
}

/// A clock that reads the system clocks plus offsets tests can change: `advance_ms`
/// lets time pass (both clocks move), `jump_wall_ms` steps the wall clock alone.
#[derive(Default)]
pub struct OffsetClock {
    offset_ms: AtomicI64,
    wall_jump_ms: AtomicI64,
}

impl OffsetClock {
    pub fn advance_ms(&self, ms: i64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn jump_wall_ms(&self, ms: i64) {
        self.wall_jump_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> Timestamp {
        SystemClock.now().plus_ms(
            self.offset_ms.load(Ordering::SeqCst) + self.wall_jump_ms.load(Ordering::SeqCst),
        )
    }
    fn monotonic_ms(&self) -> i64 {
        SystemClock.monotonic_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

//! Callbacks that failed verification: counted by provider and reason, and the most
//! recent kept in a bounded in-memory log. Deliberately not written to disk — a flood
//! of forgeries must never cost one disk sync each.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use payd_actors::model::Timestamp;

/// Why a callback was refused, for every provider. Stable names: they label
/// counters and the rejection log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    MissingSignature,
    BadSignature,
    UnknownSerial,
    Stale,
    Undecryptable,
    Malformed,
    WrongMerchant,
    UnknownOrder,
    TooLarge,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::MissingSignature,
        RejectReason::BadSignature,
        RejectReason::UnknownSerial,
        RejectReason::Stale,
        RejectReason::Undecryptable,
        RejectReason::Malformed,
        RejectReason::WrongMerchant,
        RejectReason::UnknownOrder,
        RejectReason::TooLarge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MissingSignature => "missing_signature",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::UnknownSerial => "unknown_serial",
            RejectReason::Stale => "stale_timestamp",
            RejectReason::Undecryptable => "undecryptable",
            RejectReason::Malformed => "malformed",
            RejectReason::WrongMerchant => "wrong_merchant",
            RejectReason::UnknownOrder => "unknown_order",
            RejectReason::TooLarge => "too_large",
        }
    }
}

/// Entries kept in the recent-rejections log.
const RECENT: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub provider: &'static str,
    pub reason: &'static str,
    pub source_ip: Option<String>,
    pub at: Timestamp,
}

/// Told about every rejection after it is counted (the monitor).
pub type RejectionObserver = Arc<dyn Fn(&Rejected) + Send + Sync>;

#[derive(Default)]
pub struct RejectionLog {
    counts: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    recent: Mutex<VecDeque<Rejected>>,
    observer: Option<RejectionObserver>,
}

impl RejectionLog {
    /// A log that also tells `observer` about each rejection.
    pub fn observed(observer: RejectionObserver) -> RejectionLog {
        RejectionLog {
            observer: Some(observer),
            ..RejectionLog::default()
        }
    }

    pub fn record(&self, entry: Rejected) {
        crate::metrics::callback_rejected(entry.provider, entry.reason);
        if let Some(observer) = &self.observer {
            observer(&entry);
        }
        tracing::warn!(
            provider = entry.provider,
            reason = entry.reason,
            source_ip = entry.source_ip.as_deref().unwrap_or("-"),
            "callback rejected"
        );
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((entry.provider, entry.reason))
            .or_insert(0) += 1;
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    pub fn count(&self, provider: &str, reason: &str) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((p, r), _)| *p == provider && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    pub fn counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn recent(&self) -> Vec<Rejected> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stays_bounded_under_a_flood() {
        let log = RejectionLog::default();
        for i in 0..(RECENT as i64 * 3) {
            log.record(Rejected {
                provider: "wechat",
                reason: "bad_signature",
                source_ip: None,
                at: Timestamp(i),
            });
        }
        assert_eq!(log.recent().len(), RECENT);
        assert_eq!(log.count("wechat", "bad_signature"), RECENT as u64 * 3);
        assert_eq!(log.recent()[0].at, Timestamp(RECENT as i64 * 2));
    }
}

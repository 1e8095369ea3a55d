//! Sliding windows as rings of fixed-width buckets, and the tallies they hold.
//!
//! A window of `n` buckets of width `w` covers the last `n·w` milliseconds (give or
//! take the current bucket's unfinished part). Memory is `n` tallies whatever the
//! traffic, and reading a window is a merge of at most `n` of them — cheap enough to
//! do on every tick.

use std::collections::{BTreeMap, VecDeque};

use crate::model::Timestamp;

/// A count and the money it moved, in minor units of one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Money {
    pub count: u64,
    pub amount_minor: i64,
}

impl Money {
    pub(crate) fn add(&mut self, amount_minor: i64) {
        self.count += 1;
        self.amount_minor = self.amount_minor.saturating_add(amount_minor);
    }

    fn merge(&mut self, other: &Money) {
        self.count += other.count;
        self.amount_minor = self.amount_minor.saturating_add(other.amount_minor);
    }
}

/// Order outcomes in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CurrencyTally {
    pub created: Money,
    pub paid: Money,
    pub failed: Money,
    pub expired: Money,
    pub cancelled: Money,
    /// Refunds that succeeded (counted when they succeed, by the refunded amount).
    pub refunded: Money,
}

impl CurrencyTally {
    fn merge(&mut self, o: &CurrencyTally) {
        self.created.merge(&o.created);
        self.paid.merge(&o.paid);
        self.failed.merge(&o.failed);
        self.expired.merge(&o.expired);
        self.cancelled.merge(&o.cancelled);
        self.refunded.merge(&o.refunded);
    }
}

/// Outbound calls to one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderTally {
    pub calls: u64,
    pub errors: u64,
    pub latency_ms_sum: u64,
    pub latency_ms_max: u64,
}

impl ProviderTally {
    fn merge(&mut self, o: &ProviderTally) {
        self.calls += o.calls;
        self.errors += o.errors;
        self.latency_ms_sum = self.latency_ms_sum.saturating_add(o.latency_ms_sum);
        self.latency_ms_max = self.latency_ms_max.max(o.latency_ms_max);
    }
}

/// Everything counted in one bucket (or, merged, in one window).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub currencies: BTreeMap<String, CurrencyTally>,
    /// Rejected callbacks by (provider, reason).
    pub rejected: BTreeMap<(&'static str, &'static str), u64>,
    pub providers: BTreeMap<&'static str, ProviderTally>,
    pub large_payments: u64,
    pub late_payments: u64,
    /// New anomalies by kind.
    pub anomalies: BTreeMap<&'static str, u64>,
    /// Failed storage commits.
    pub storage_failures: u64,
}

impl Tally {
    pub(crate) fn merge(&mut self, o: &Tally) {
        for (c, t) in &o.currencies {
            self.currencies.entry(c.clone()).or_default().merge(t);
        }
        for (k, n) in &o.rejected {
            *self.rejected.entry(*k).or_default() += n;
        }
        for (p, t) in &o.providers {
            self.providers.entry(p).or_default().merge(t);
        }
        self.large_payments += o.large_payments;
        self.late_payments += o.late_payments;
        for (k, n) in &o.anomalies {
            *self.anomalies.entry(k).or_default() += n;
        }
        self.storage_failures += o.storage_failures;
    }

    pub(crate) fn currency(&mut self, code: &str) -> &mut CurrencyTally {
        self.currencies.entry(code.to_string()).or_default()
    }

    /// Counts over every currency (amounts of different currencies are not added).
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for t in self.currencies.values() {
            c.created += t.created.count;
            c.paid += t.paid.count;
            c.failed += t.failed.count;
            c.expired += t.expired.count;
            c.cancelled += t.cancelled.count;
            c.refunded += t.refunded.count;
        }
        c
    }

    /// Rejected callbacks of one provider, all reasons.
    pub fn rejected_of(&self, provider: &str) -> u64 {
        self.rejected
            .iter()
            .filter(|((p, _), _)| *p == provider)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Order counts over all currencies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub paid: u64,
    pub failed: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub refunded: u64,
}

impl Counts {
    /// Orders that reached an outcome: paid, failed, expired or cancelled.
    pub fn settled(&self) -> u64 {
        self.paid + self.failed + self.expired + self.cancelled
    }
}

/// A ring of buckets covering a span of time.
#[derive(Debug)]
pub(crate) struct Window {
    width_ms: i64,
    len: i64,
    /// (bucket number = time / width, its tally), oldest first.
    buckets: VecDeque<(i64, Tally)>,
}

impl Window {
    /// `len` buckets spanning `span_ms` (each at least 1 ms wide).
    pub(crate) fn new(span_ms: i64, len: usize) -> Window {
        let len = len.max(1) as i64;
        Window {
            width_ms: (span_ms / len).max(1),
            len,
            buckets: VecDeque::new(),
        }
    }

    pub(crate) fn span_ms(&self) -> i64 {
        self.width_ms * self.len
    }

    fn oldest(&self, now: Timestamp) -> i64 {
        now.ms().div_euclid(self.width_ms) - self.len + 1
    }

    /// Counts something that happened at `now`.
    pub(crate) fn add(&mut self, now: Timestamp, f: impl FnOnce(&mut Tally)) {
        let index = now.ms().div_euclid(self.width_ms);
        match self.buckets.back_mut() {
            Some((last, tally)) if *last >= index => {
                // Same bucket, or the clock stepped back a little: count it in the
                // newest bucket rather than rewrite history.
                f(tally);
            }
            _ => {
                let mut tally = Tally::default();
                f(&mut tally);
                self.buckets.push_back((index, tally));
            }
        }
        self.prune(now);
    }

    pub(crate) fn prune(&mut self, now: Timestamp) {
        let oldest = self.oldest(now);
        while self.buckets.front().is_some_and(|(i, _)| *i < oldest) {
            self.buckets.pop_front();
        }
    }

    /// Everything counted within the window ending at `now`.
    pub(crate) fn sum(&self, now: Timestamp) -> Tally {
        let oldest = self.oldest(now);
        let mut total = Tally::default();
        for (_, t) in self.buckets.iter().filter(|(i, _)| *i >= oldest) {
            total.merge(t);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_leave_the_window_after_its_span() {
        let mut w = Window::new(60_000, 60);
        w.add(Timestamp(0), |t| t.currency("CNY").paid.add(100));
        w.add(Timestamp(30_000), |t| t.currency("CNY").paid.add(200));
        assert_eq!(w.sum(Timestamp(59_000)).currencies["CNY"].paid.count, 2);
        let later = w.sum(Timestamp(60_500));
        assert_eq!(later.currencies["CNY"].paid.amount_minor, 200);
        assert!(w.sum(Timestamp(200_000)).currencies.is_empty());
    }

    #[test]
    fn memory_is_bounded_by_the_bucket_count() {
        let mut w = Window::new(60_000, 60);
        for s in 0..10_000 {
            w.add(Timestamp(s * 1000), |t| t.large_payments += 1);
        }
        assert!(w.buckets.len() <= 60);
        assert_eq!(w.sum(Timestamp(9_999_000)).large_payments, 60);
    }
}

//! The monitor: sliding-window counts of what payd does, and the alert rules over
//! them.
//!
//! Shaped like the order: [`MonitorCore`] is plain data and functions — facts in,
//! `now` passed in, alert changes out — so every rule can be driven through a
//! scripted sequence of events with an injected clock, without a runtime. [`Monitor`]
//! is the actor that hosts it: it ticks the rules, samples storage health, and
//! answers the status and history questions of the admin API. Order actors reach it
//! through [`MonitorObserver`] (called after every durable transition; it only
//! casts), the HTTP layer and the provider executor through [`MonitorHandle`].
//!
//! Alerts are keyed by rule and subject (a provider, a currency, an order): each
//! fires once when its condition starts to hold, resolves when it stops holding,
//! and both moments are kept in a bounded history. Rates only alert above
//! `min_volume` settled orders, so one failure out of one order pages nobody.
//! Windows are rings of buckets and per-user state is capped, so memory stays
//! bounded whatever the traffic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use payd_storage::Store;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::clock::SharedClock;
use crate::model::{AnomalyKind, Order, OrderStatus, RefundState, Timestamp};
use crate::order::OrderObserver;

#[cfg(test)]
mod tests;
mod window;

use window::Window;
pub use window::{Counts, CurrencyTally, Money, ProviderTally, Tally};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;
/// Buckets per rate window and per burst window.
const WINDOW_BUCKETS: usize = 60;
/// 24 h in quarter hours.
const DAY_BUCKETS: usize = 96;
/// Users remembered for "active users" and "rapid payments"; beyond this the oldest
/// half is forgotten (a flood of fake users must not grow memory without bound).
const MAX_TRACKED_USERS: usize = 100_000;
/// Open anomalies, large and late payments remembered for their alerts.
const MAX_TRACKED_EVENTS: usize = 10_000;

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// The alert rules. Stable names: they label metrics and appear in the admin API and
/// in `grafana/alerts.yml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// failed / (paid + failed) above `failure_rate_alert` in the window.
    FailureRate,
    /// refunded / paid, by amount in one currency, above `refund_rate_alert`.
    RefundRate,
    /// One payment above `large_transaction` for its currency.
    LargePayment,
    /// A burst of failed calls to one provider.
    ProviderErrors,
    /// A provider's circuit breaker is open.
    CircuitOpen,
    /// Storage refuses writes, or a commit failed recently.
    StorageErrors,
    /// An order anomaly (amount mismatch, double payment, dispute, …) still open.
    Anomaly,
    /// A payment confirmed after the order was cancelled or expired.
    LatePayment,
    /// A spike of rejected callbacks from one provider.
    RejectedCallbacks,
    /// One user paying many times in a short while.
    RapidPayments,
}

impl Rule {
    pub const ALL: [Rule; 10] = [
        Rule::FailureRate,
        Rule::RefundRate,
        Rule::LargePayment,
        Rule::ProviderErrors,
        Rule::CircuitOpen,
        Rule::StorageErrors,
        Rule::Anomaly,
        Rule::LatePayment,
        Rule::RejectedCallbacks,
        Rule::RapidPayments,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::FailureRate => "failure_rate",
            Rule::RefundRate => "refund_rate",
            Rule::LargePayment => "large_payment",
            Rule::ProviderErrors => "provider_errors",
            Rule::CircuitOpen => "circuit_open",
            Rule::StorageErrors => "storage_errors",
            Rule::Anomaly => "anomaly",
            Rule::LatePayment => "late_payment",
            Rule::RejectedCallbacks => "rejected_callbacks",
            Rule::RapidPayments => "rapid_payments",
        }
    }
}

/// One alert: fired when its condition began to hold, resolved when it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Increasing within the process.
    pub id: u64,
    pub rule: Rule,
    pub severity: Severity,
    /// What it is about: a provider, a currency, an order, a user, or `all`.
    pub subject: String,
    pub message: String,
    /// The measured value behind a rate or count alert.
    pub value: Option<f64>,
    pub fired_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
}

/// Told about every alert that fires or resolves (metrics). Must not block.
pub trait AlertSink: Send + Sync + 'static {
    fn changed(&self, alert: &Alert);
}

/// How an order ended, for the rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Failed,
    Expired,
    Cancelled,
}

/// Something that happened, as the monitor counts it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Created {
        user_id: String,
        currency: String,
        amount_minor: i64,
    },
    Paid {
        order_no: String,
        user_id: String,
        currency: String,
        amount_minor: i64,
        late: bool,
    },
    Settled {
        outcome: Outcome,
        currency: String,
        amount_minor: i64,
    },
    Refunded {
        currency: String,
        amount_minor: i64,
    },
    /// An anomaly opened (`resolved: false`) or was resolved.
    Anomaly {
        order_no: String,
        index: usize,
        kind: AnomalyKind,
        resolved: bool,
    },
    CallbackRejected {
        provider: &'static str,
        reason: &'static str,
    },
    ProviderCall {
        provider: &'static str,
        ok: bool,
        latency_ms: u64,
    },
    Breaker {
        provider: &'static str,
        open: bool,
    },
    /// Sampled from the store: healthy now, and failed commits so far.
    Storage {
        healthy: bool,
        failed_commits: u64,
    },
}

/// What a durable transition from `before` to `after` means to the monitor.
pub fn facts_of(before: &Order, after: &Order) -> Vec<Fact> {
    let mut facts = Vec::new();
    let currency = || after.currency.as_str().to_string();
    // The first transition of every order steps from the version `create_order`
    // stored (0): that is when the order counts as created.
    if before.version == 0 {
        facts.push(Fact::Created {
            user_id: after.user_id.clone(),
            currency: currency(),
            amount_minor: after.amount_minor,
        });
    }
    if before.status != after.status {
        match after.status {
            OrderStatus::Paid if !before.status.is_paid() => facts.push(Fact::Paid {
                order_no: after.order_no.clone(),
                user_id: after.user_id.clone(),
                currency: currency(),
                amount_minor: after.amount_minor,
                late: after.late_payment,
            }),
            OrderStatus::Failed | OrderStatus::Expired | OrderStatus::Cancelled => {
                let outcome = match after.status {
                    OrderStatus::Failed => Outcome::Failed,
                    OrderStatus::Expired => Outcome::Expired,
                    _ => Outcome::Cancelled,
                };
                facts.push(Fact::Settled {
                    outcome,
                    currency: currency(),
                    amount_minor: after.amount_minor,
                });
            }
            _ => {}
        }
    }
    for refund in &after.refunds {
        let was_done = before
            .refunds
            .iter()
            .any(|r| r.refund_no == refund.refund_no && r.state == RefundState::Succeeded);
        if refund.state == RefundState::Succeeded && !was_done {
            facts.push(Fact::Refunded {
                currency: currency(),
                amount_minor: refund.amount_minor,
            });
        }
    }
    for (index, anomaly) in after.anomalies.iter().enumerate() {
        let opened = index >= before.anomalies.len();
        let resolved_now =
            anomaly.resolved && before.anomalies.get(index).is_some_and(|a| !a.resolved);
        if opened || resolved_now {
            facts.push(Fact::Anomaly {
                order_no: after.order_no.clone(),
                index,
                kind: anomaly.kind,
                resolved: anomaly.resolved,
            });
        }
    }
    facts
}

/// Thresholds of the rules. The first five come from `monitor.*` in the config.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    pub failure_rate_alert: f64,
    pub refund_rate_alert: f64,
    pub min_volume: u32,
    /// Minor units per currency code.
    pub large_transaction: BTreeMap<String, i64>,
    /// The rate window.
    pub window: Duration,
    /// Window of the burst rules (provider errors, rejected callbacks, storage).
    pub burst_window: Duration,
    /// Failed calls to one provider within `burst_window` that alert.
    pub provider_error_burst: u32,
    /// Rejected callbacks from one provider within `burst_window` that alert.
    pub rejected_callback_spike: u32,
    /// Payments by one user within `rapid_window` that alert.
    pub rapid_payments: u32,
    pub rapid_window: Duration,
    /// Alerts kept in the history (fired and resolved).
    pub history: usize,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            failure_rate_alert: 0.10,
            refund_rate_alert: 0.05,
            min_volume: 20,
            large_transaction: BTreeMap::from([
                ("CNY".to_string(), 100_000),
                ("USD".to_string(), 20_000),
            ]),
            window: Duration::from_secs(3600),
            burst_window: Duration::from_secs(300),
            provider_error_burst: 5,
            rejected_callback_spike: 20,
            rapid_payments: 5,
            rapid_window: Duration::from_secs(600),
            history: 1000,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Counts and rates over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStatus {
    pub span_ms: i64,
    pub tally: Tally,
    pub counts: Counts,
    /// paid / settled.
    pub success_rate: Option<f64>,
    /// failed / (paid + failed).
    pub failure_rate: Option<f64>,
    /// (expired + cancelled) / settled: abandoned QR codes, normal in moderation.
    pub abandonment_rate: Option<f64>,
    /// refunds / payments, by count.
    pub refund_rate_by_count: Option<f64>,
    /// refunded / paid, by amount, per currency.
    pub refund_rate_by_amount: BTreeMap<String, f64>,
    /// Distinct users who created an order.
    pub active_users: usize,
}

/// The monitor's answer to "how are we doing".
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorStatus {
    pub at: Timestamp,
    /// `ok`, `degraded` (a warning is active) or `critical`.
    pub health: &'static str,
    pub storage_healthy: bool,
    pub open_breakers: Vec<&'static str>,
    pub window: WindowStatus,
    pub day: WindowStatus,
    /// Active alerts, most severe first.
    pub active: Vec<Alert>,
    /// Alerts fired since start.
    pub fired_total: u64,
}

fn ratio(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// What one rule wants active now.
struct Wanted {
    severity: Severity,
    message: String,
    value: Option<f64>,
}

/// The monitor's state and rules, without a runtime.
pub struct MonitorCore {
    settings: MonitorSettings,
    window: Window,
    day: Window,
    burst: Window,
    /// User → when they last created an order.
    users: HashMap<String, Timestamp>,
    /// User → when they paid, within the rapid window.
    payers: HashMap<String, VecDeque<Timestamp>>,
    /// (when, order, what) of large payments within the window.
    large: VecDeque<(Timestamp, String, String)>,
    late: VecDeque<(Timestamp, String, String)>,
    /// "order_no#index" → (kind, order) of anomalies not yet resolved.
    anomalies: BTreeMap<String, (AnomalyKind, String)>,
    breakers: BTreeMap<&'static str, bool>,
    storage_healthy: bool,
    failed_commits: Option<u64>,
    active: BTreeMap<(Rule, String), Alert>,
    history: VecDeque<Alert>,
    next_id: u64,
    fired_total: u64,
}

impl MonitorCore {
    pub fn new(settings: MonitorSettings) -> MonitorCore {
        MonitorCore {
            window: Window::new(ms(settings.window), WINDOW_BUCKETS),
            day: Window::new(DAY_MS, DAY_BUCKETS),
            burst: Window::new(ms(settings.burst_window), WINDOW_BUCKETS),
            settings,
            users: HashMap::new(),
            payers: HashMap::new(),
            large: VecDeque::new(),
            late: VecDeque::new(),
            anomalies: BTreeMap::new(),
            breakers: BTreeMap::new(),
            storage_healthy: true,
            failed_commits: None,
            active: BTreeMap::new(),
            history: VecDeque::new(),
            next_id: 1,
            fired_total: 0,
        }
    }

    pub fn settings(&self) -> &MonitorSettings {
        &self.settings
    }

    /// Counts `fact` as having happened at `now`.
    pub fn record(&mut self, fact: Fact, now: Timestamp) {
        match fact {
            Fact::Created {
                user_id,
                currency,
                amount_minor,
            } => {
                self.count(now, |t| t.currency(&currency).created.add(amount_minor));
                self.users.insert(user_id, now);
                if self.users.len() > MAX_TRACKED_USERS {
                    shed_oldest(&mut self.users, |t| *t);
                }
            }
            Fact::Paid {
                order_no,
                user_id,
                currency,
                amount_minor,
                late,
            } => {
                let large = self
                    .settings
                    .large_transaction
                    .get(&currency)
                    .is_some_and(|limit| amount_minor > *limit);
                self.count(now, |t| {
                    t.currency(&currency).paid.add(amount_minor);
                    t.large_payments += u64::from(large);
                    t.late_payments += u64::from(late);
                });
                let what = format!("{amount_minor} {currency}");
                if large {
                    push_bounded(&mut self.large, (now, order_no.clone(), what.clone()));
                }
                if late {
                    push_bounded(&mut self.late, (now, order_no, what));
                }
                self.payers.entry(user_id).or_default().push_back(now);
                if self.payers.len() > MAX_TRACKED_USERS {
                    shed_oldest(&mut self.payers, |q| q.back().copied().unwrap_or_default());
                }
            }
            Fact::Settled {
                outcome,
                currency,
                amount_minor,
            } => self.count(now, |t| {
                let c = t.currency(&currency);
                match outcome {
                    Outcome::Failed => c.failed.add(amount_minor),
                    Outcome::Expired => c.expired.add(amount_minor),
                    Outcome::Cancelled => c.cancelled.add(amount_minor),
                }
            }),
            Fact::Refunded {
                currency,
                amount_minor,
            } => self.count(now, |t| t.currency(&currency).refunded.add(amount_minor)),
            Fact::Anomaly {
                order_no,
                index,
                kind,
                resolved,
            } => {
                let key = format!("{order_no}#{index}");
                if resolved {
                    self.anomalies.remove(&key);
                } else {
                    self.count(now, |t| *t.anomalies.entry(kind.as_str()).or_default() += 1);
                    self.anomalies.insert(key, (kind, order_no));
                    while self.anomalies.len() > MAX_TRACKED_EVENTS {
                        self.anomalies.pop_first();
                    }
                }
            }
            Fact::CallbackRejected { provider, reason } => self.count(now, |t| {
                *t.rejected.entry((provider, reason)).or_default() += 1
            }),
            Fact::ProviderCall {
                provider,
                ok,
                latency_ms,
            } => self.count(now, |t| {
                let p = t.providers.entry(provider).or_default();
                p.calls += 1;
                p.errors += u64::from(!ok);
                p.latency_ms_sum = p.latency_ms_sum.saturating_add(latency_ms);
                p.latency_ms_max = p.latency_ms_max.max(latency_ms);
            }),
            Fact::Breaker { provider, open } => {
                self.breakers.insert(provider, open);
            }
            Fact::Storage {
                healthy,
                failed_commits,
            } => {
                self.storage_healthy = healthy;
                let new =
                    failed_commits.saturating_sub(self.failed_commits.unwrap_or(failed_commits));
                if new > 0 {
                    self.count(now, |t| t.storage_failures += new);
                }
                self.failed_commits = Some(failed_commits);
            }
        }
    }

    fn count(&mut self, now: Timestamp, f: impl Fn(&mut Tally)) {
        self.window.add(now, &f);
        self.day.add(now, &f);
        self.burst.add(now, &f);
    }

    fn window_status(&self, window: &Window, now: Timestamp) -> WindowStatus {
        let tally = window.sum(now);
        let counts = tally.counts();
        let since = now.plus_ms(-window.span_ms());
        let refund_rate_by_amount = tally
            .currencies
            .iter()
            .filter(|(_, t)| t.paid.amount_minor > 0)
            .map(|(c, t)| {
                (
                    c.clone(),
                    t.refunded.amount_minor as f64 / t.paid.amount_minor as f64,
                )
            })
            .collect();
        WindowStatus {
            span_ms: window.span_ms(),
            success_rate: ratio(counts.paid, counts.settled()),
            failure_rate: ratio(counts.failed, counts.paid + counts.failed),
            abandonment_rate: ratio(counts.expired + counts.cancelled, counts.settled()),
            refund_rate_by_count: ratio(counts.refunded, counts.paid),
            refund_rate_by_amount,
            active_users: self.users.values().filter(|t| **t > since).count(),
            counts,
            tally,
        }
    }

    /// The alerts whose conditions hold at `now`.
    fn conditions(&mut self, now: Timestamp) -> BTreeMap<(Rule, String), Wanted> {
        let s = &self.settings;
        let mut want = BTreeMap::new();
        let window = self.window.sum(now);
        let counts = window.counts();
        let min_volume = u64::from(s.min_volume);

        let decided = counts.paid + counts.failed;
        if decided >= min_volume.max(1) {
            let rate = counts.failed as f64 / decided as f64;
            if rate > s.failure_rate_alert {
                want.insert(
                    (Rule::FailureRate, "all".to_string()),
                    Wanted {
                        severity: Severity::Critical,
                        message: format!(
                            "{} of {} decided payments failed ({:.1} %, alert above {:.1} %)",
                            counts.failed,
                            decided,
                            rate * 100.0,
                            s.failure_rate_alert * 100.0
                        ),
                        value: Some(rate),
                    },
                );
            }
        }
        for (currency, t) in &window.currencies {
            if t.paid.count < min_volume.max(1) || t.paid.amount_minor <= 0 {
                continue;
            }
            let rate = t.refunded.amount_minor as f64 / t.paid.amount_minor as f64;
            if rate > s.refund_rate_alert {
                want.insert(
                    (Rule::RefundRate, currency.clone()),
                    Wanted {
                        severity: Severity::Warning,
                        message: format!(
                            "{} of {} {currency} paid was refunded ({:.1} %, alert above {:.1} %)",
                            t.refunded.amount_minor,
                            t.paid.amount_minor,
                            rate * 100.0,
                            s.refund_rate_alert * 100.0
                        ),
                        value: Some(rate),
                    },
                );
            }
        }

        let since = now.plus_ms(-self.window.span_ms());
        for (list, rule, what) in [
            (&mut self.large, Rule::LargePayment, "large payment"),
            (
                &mut self.late,
                Rule::LatePayment,
                "payment after cancel or expiry",
            ),
        ] {
            while list.front().is_some_and(|(at, _, _)| *at <= since) {
                list.pop_front();
            }
            for (_, order_no, amount) in list.iter() {
                want.insert(
                    (rule, order_no.clone()),
                    Wanted {
                        severity: Severity::Warning,
                        message: format!("{what} of {amount} on order {order_no}"),
                        value: None,
                    },
                );
            }
        }

        for (key, (kind, order_no)) in &self.anomalies {
            let severity = match kind {
                AnomalyKind::AmountMismatch | AnomalyKind::DoublePayment | AnomalyKind::Dispute => {
                    Severity::Critical
                }
                AnomalyKind::LatePaymentRefund
                | AnomalyKind::RefundAbnormal
                | AnomalyKind::ClawbackShortfall => Severity::Warning,
            };
            want.insert(
                (Rule::Anomaly, key.clone()),
                Wanted {
                    severity,
                    message: format!("{} on order {order_no}, not resolved", kind.as_str()),
                    value: None,
                },
            );
        }

        let burst = self.burst.sum(now);
        let burst_minutes = s.burst_window.as_secs() / 60;
        for (provider, t) in &burst.providers {
            if t.errors >= u64::from(s.provider_error_burst.max(1)) {
                want.insert(
                    (Rule::ProviderErrors, provider.to_string()),
                    Wanted {
                        severity: Severity::Critical,
                        message: format!(
                            "{} of {} calls to {provider} failed in the last {burst_minutes} min",
                            t.errors, t.calls
                        ),
                        value: Some(t.errors as f64),
                    },
                );
            }
        }
        for (provider, open) in &self.breakers {
            if *open {
                want.insert(
                    (Rule::CircuitOpen, provider.to_string()),
                    Wanted {
                        severity: Severity::Critical,
                        message: format!("the circuit breaker of {provider} is open"),
                        value: None,
                    },
                );
            }
        }
        if !self.storage_healthy || burst.storage_failures > 0 {
            want.insert(
                (Rule::StorageErrors, "storage".to_string()),
                Wanted {
                    severity: Severity::Critical,
                    message: if self.storage_healthy {
                        format!(
                            "{} storage commits failed in the last {burst_minutes} min",
                            burst.storage_failures
                        )
                    } else {
                        "storage refuses writes until it is reopened".to_string()
                    },
                    value: Some(burst.storage_failures as f64),
                },
            );
        }
        let mut rejected: BTreeMap<&'static str, u64> = BTreeMap::new();
        for ((provider, _), n) in &burst.rejected {
            *rejected.entry(provider).or_default() += n;
        }
        for (provider, n) in rejected {
            if n >= u64::from(s.rejected_callback_spike.max(1)) {
                want.insert(
                    (Rule::RejectedCallbacks, provider.to_string()),
                    Wanted {
                        severity: Severity::Warning,
                        message: format!(
                            "{n} callbacks claiming to be from {provider} were rejected in the last {burst_minutes} min"
                        ),
                        value: Some(n as f64),
                    },
                );
            }
        }

        let rapid_since = now.plus_ms(-ms(s.rapid_window));
        let rapid_limit = s.rapid_payments.max(1) as usize;
        self.payers.retain(|user, times| {
            while times.front().is_some_and(|t| *t <= rapid_since) {
                times.pop_front();
            }
            if times.len() >= rapid_limit {
                want.insert(
                    (Rule::RapidPayments, user.clone()),
                    Wanted {
                        severity: Severity::Warning,
                        message: format!(
                            "user {user} paid {} times in {} min",
                            times.len(),
                            s.rapid_window.as_secs() / 60
                        ),
                        value: Some(times.len() as f64),
                    },
                );
            }
            !times.is_empty()
        });
        want
    }

    /// Evaluates every rule at `now`: fires what newly holds, resolves what stopped
    /// holding, and returns those changes (each alert as it now stands).
    pub fn evaluate(&mut self, now: Timestamp) -> Vec<Alert> {
        self.window.prune(now);
        self.day.prune(now);
        self.burst.prune(now);
        let day_ago = now.plus_ms(-DAY_MS);
        self.users.retain(|_, t| *t > day_ago);

        let want = self.conditions(now);
        let mut changes = Vec::new();
        let gone: Vec<(Rule, String)> = self
            .active
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(mut alert) = self.active.remove(&key) {
                alert.resolved_at = Some(now);
                if let Some(kept) = self.history.iter_mut().rev().find(|a| a.id == alert.id) {
                    kept.resolved_at = Some(now);
                }
                tracing::info!(rule = alert.rule.as_str(), subject = %alert.subject, "alert resolved");
                changes.push(alert);
            }
        }
        for (key, w) in want {
            if let Some(alert) = self.active.get_mut(&key) {
                // Still holding: keep the figures current, fire nothing.
                alert.message = w.message;
                alert.value = w.value;
                continue;
            }
            let alert = Alert {
                id: self.next_id,
                rule: key.0,
                severity: w.severity,
                subject: key.1.clone(),
                message: w.message,
                value: w.value,
                fired_at: now,
                resolved_at: None,
            };
            self.next_id += 1;
            self.fired_total += 1;
            match alert.severity {
                Severity::Critical => {
                    tracing::error!(rule = alert.rule.as_str(), subject = %alert.subject, message = %alert.message, "alert fired")
                }
                Severity::Warning | Severity::Info => {
                    tracing::warn!(rule = alert.rule.as_str(), subject = %alert.subject, message = %alert.message, "alert fired")
                }
            }
            self.history.push_back(alert.clone());
            while self.history.len() > self.settings.history.max(1) {
                self.history.pop_front();
            }
            self.active.insert(key, alert.clone());
            changes.push(alert);
        }
        changes
    }

    /// Active alerts, most severe first, then oldest first.
    pub fn active(&self) -> Vec<Alert> {
        let mut alerts: Vec<Alert> = self.active.values().cloned().collect();
        alerts.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
        alerts
    }

    /// A page (from 1) of the alert history, newest first, and the total kept.
    pub fn history(&self, page: usize, page_size: usize) -> (Vec<Alert>, usize) {
        let skip = page.saturating_sub(1).saturating_mul(page_size);
        let items = self
            .history
            .iter()
            .rev()
            .skip(skip)
            .take(page_size)
            .cloned()
            .collect();
        (items, self.history.len())
    }

    pub fn status(&self, now: Timestamp) -> MonitorStatus {
        let active = self.active();
        let worst = active.iter().map(|a| a.severity).max();
        let health = if !self.storage_healthy || worst == Some(Severity::Critical) {
            "critical"
        } else if worst == Some(Severity::Warning) {
            "degraded"
        } else {
            "ok"
        };
        MonitorStatus {
            at: now,
            health,
            storage_healthy: self.storage_healthy,
            open_breakers: self
                .breakers
                .iter()
                .filter(|(_, open)| **open)
                .map(|(p, _)| *p)
                .collect(),
            window: self.window_status(&self.window, now),
            day: self.window_status(&self.day, now),
            active,
            fired_total: self.fired_total,
        }
    }
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T) {
    list.push_back(item);
    while list.len() > MAX_TRACKED_EVENTS {
        list.pop_front();
    }
}

/// Forgets the older half of `map` by the time `at` gives each entry.
fn shed_oldest<V>(map: &mut HashMap<String, V>, at: impl Fn(&V) -> Timestamp) {
    let mut times: Vec<Timestamp> = map.values().map(&at).collect();
    let middle = times.len() / 2;
    let (_, cut, _) = times.select_nth_unstable(middle);
    let cut = *cut;
    map.retain(|_, v| at(v) > cut);
}

// ---------------------------------------------------------------------------
// The actor
// ---------------------------------------------------------------------------

pub enum MonitorMsg {
    Facts(Vec<Fact>),
    Tick,
    Status(RpcReplyPort<MonitorStatus>),
    /// A page of the alert history (newest first) and the total kept.
    History {
        page: usize,
        page_size: usize,
        reply: RpcReplyPort<(Vec<Alert>, usize)>,
    },
}

pub struct MonitorArgs {
    pub settings: MonitorSettings,
    pub clock: SharedClock,
    /// Sampled on every tick for its health and failed commits.
    pub store: Option<Store>,
    /// How often the rules are evaluated.
    pub tick: Duration,
    pub sink: Option<Arc<dyn AlertSink>>,
}

pub struct Monitor;

pub struct MonitorState {
    core: MonitorCore,
    clock: SharedClock,
    store: Option<Store>,
    sink: Option<Arc<dyn AlertSink>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl MonitorState {
    fn evaluate(&mut self) {
        let now = self.clock.now();
        if let Some(store) = &self.store {
            self.core.record(
                Fact::Storage {
                    healthy: store.is_healthy(),
                    failed_commits: store.stats().failed_commits,
                },
                now,
            );
        }
        for alert in self.core.evaluate(now) {
            if let Some(sink) = &self.sink {
                sink.changed(&alert);
            }
        }
    }
}

impl Actor for Monitor {
    type Msg = MonitorMsg;
    type State = MonitorState;
    type Arguments = MonitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MonitorMsg>,
        args: MonitorArgs,
    ) -> Result<MonitorState, ActorProcessingErr> {
        let ticker = myself.send_interval(args.tick.max(Duration::from_millis(10)), || {
            MonitorMsg::Tick
        });
        Ok(MonitorState {
            core: MonitorCore::new(args.settings),
            clock: args.clock,
            store: args.store,
            sink: args.sink,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MonitorMsg>,
        st: &mut MonitorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<MonitorMsg>,
        msg: MonitorMsg,
        st: &mut MonitorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MonitorMsg::Facts(facts) => {
                let now = st.clock.now();
                for fact in facts {
                    st.core.record(fact, now);
                }
            }
            MonitorMsg::Tick => st.evaluate(),
            MonitorMsg::Status(reply) => {
                // Answer with the rules applied to everything heard so far.
                st.evaluate();
                let _ = reply.send(st.core.status(st.clock.now()));
            }
            MonitorMsg::History {
                page,
                page_size,
                reply,
            } => {
                st.evaluate();
                let _ = reply.send(st.core.history(page, page_size));
            }
        }
        Ok(())
    }
}

/// A cheap, cloneable way to tell the monitor things. Casting never blocks; a
/// monitor that is gone loses the fact, never the caller's work.
#[derive(Clone)]
pub struct MonitorHandle {
    monitor: ActorRef<MonitorMsg>,
}

impl MonitorHandle {
    pub fn new(monitor: ActorRef<MonitorMsg>) -> Self {
        MonitorHandle { monitor }
    }

    pub fn actor(&self) -> &ActorRef<MonitorMsg> {
        &self.monitor
    }

    pub fn tell(&self, fact: Fact) {
        let _ = self.monitor.cast(MonitorMsg::Facts(vec![fact]));
    }

    pub fn tell_all(&self, facts: Vec<Fact>) {
        if !facts.is_empty() {
            let _ = self.monitor.cast(MonitorMsg::Facts(facts));
        }
    }

    pub async fn status(&self) -> Option<MonitorStatus> {
        match self
            .monitor
            .call(MonitorMsg::Status, Some(Duration::from_secs(5)))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(s)) => Some(s),
            _ => None,
        }
    }

    pub async fn history(&self, page: usize, page_size: usize) -> Option<(Vec<Alert>, usize)> {
        match self
            .monitor
            .call(
                |reply| MonitorMsg::History {
                    page,
                    page_size,
                    reply,
                },
                Some(Duration::from_secs(5)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(h)) => Some(h),
            _ => None,
        }
    }
}

/// Tells the monitor about every durable transition; only casts.
pub struct MonitorObserver {
    handle: MonitorHandle,
}

impl MonitorObserver {
    pub fn new(handle: MonitorHandle) -> Self {
        MonitorObserver { handle }
    }
}

impl OrderObserver for MonitorObserver {
    fn transition(&self, before: &Order, after: &Order, _event: &str) {
        self.handle.tell_all(facts_of(before, after));
    }
}

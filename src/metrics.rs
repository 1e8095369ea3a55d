//! Prometheus metrics: every metric name payd exports, in one place, and the few
//! functions that record them.
//!
//! The names below are the contract with `grafana/` (dashboards and alert rules use
//! only these) and with the README's table. Labels are bounded sets — route
//! templates, methods, providers, operations, statuses, reasons, currencies from the
//! configuration — never an order number or a user id, so the number of series does
//! not grow with traffic. Counters are registered at zero for every known label
//! value at start-up, so a dashboard or an alert selects a series from the first
//! scrape instead of "no data" until the first incident.
//!
//! Recording goes through the `metrics` facade into one process-wide Prometheus
//! recorder (`metrics-exporter-prometheus`, rendering only: payd serves `/metrics`
//! itself). Gauges that mirror state held elsewhere (live actors, storage health,
//! active alerts) are sampled when `/metrics` is scraped.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use payd_actors::model::{AnomalyKind, OrderStatus, PaymentMethod};
use payd_actors::monitor::{Alert, AlertSink, Rule, Severity};
use payd_storage::{CommitObserver, CommitReport};

use crate::providers::rejections::RejectReason;

// ---- HTTP ----
/// counter {route, method, status}: requests answered.
pub const HTTP_REQUESTS: &str = "payd_http_requests_total";
/// histogram {route, method}: time to answer.
pub const HTTP_DURATION: &str = "payd_http_request_duration_seconds";
/// counter {class}: requests refused with 429.
pub const RATE_LIMITED: &str = "payd_rate_limited_total";
/// gauge: token buckets held by the rate limiter.
pub const RATE_LIMIT_BUCKETS: &str = "payd_rate_limiter_buckets";

// ---- Orders and money ----
/// counter {method, currency}: orders created.
pub const ORDERS_CREATED: &str = "payd_orders_created_total";
/// counter {from, to, method}: durable status changes.
pub const ORDER_TRANSITIONS: &str = "payd_order_transitions_total";
/// counter {currency}: payments (orders becoming paid).
pub const PAYMENTS: &str = "payd_payments_total";
/// counter {currency}: amount paid, in minor units.
pub const PAYMENT_AMOUNT: &str = "payd_payment_amount_minor_total";
/// counter {currency}: refunds that succeeded.
pub const REFUNDS: &str = "payd_refunds_total";
/// counter {currency}: amount refunded, in minor units.
pub const REFUND_AMOUNT: &str = "payd_refund_amount_minor_total";
/// counter {currency}: payments above `monitor.large_transaction`.
pub const LARGE_PAYMENTS: &str = "payd_large_payments_total";
/// counter: payments confirmed after the order was cancelled or expired.
pub const LATE_PAYMENTS: &str = "payd_late_payments_total";
/// counter {kind}: anomalies opened on orders.
pub const ANOMALIES: &str = "payd_anomalies_total";

// ---- Providers ----
/// counter {provider, operation}: outbound calls (each attempt).
pub const PROVIDER_CALLS: &str = "payd_provider_calls_total";
/// counter {provider, operation}: attempts that failed (transport error or 5xx).
pub const PROVIDER_ERRORS: &str = "payd_provider_errors_total";
/// histogram {provider, operation}: attempt latency.
pub const PROVIDER_DURATION: &str = "payd_provider_call_duration_seconds";
/// gauge {provider}: 1 while the circuit breaker is open.
pub const PROVIDER_CIRCUIT_OPEN: &str = "payd_provider_circuit_open";

// ---- Callbacks ----
/// counter {provider}: callbacks received (before any check).
pub const CALLBACKS_RECEIVED: &str = "payd_callbacks_received_total";
/// counter {provider}: callbacks verified and acknowledged with a success reply.
pub const CALLBACKS_VERIFIED: &str = "payd_callbacks_verified_total";
/// counter {provider, reason}: callbacks refused.
pub const CALLBACKS_REJECTED: &str = "payd_callbacks_rejected_total";
/// counter {provider}: repeats answered from the recent-event cache.
pub const CALLBACKS_DEDUPLICATED: &str = "payd_callbacks_deduplicated_total";

// ---- Internals ----
/// gauge: order actors alive now.
pub const ORDER_ACTORS_LIVE: &str = "payd_order_actors_live";
/// counter: order actors restarted after a failure.
pub const ORDER_ACTOR_RESTARTS: &str = "payd_order_actor_restarts_total";
/// gauge: orders quarantined after exhausting their restart budget.
pub const ORDERS_QUARANTINED: &str = "payd_orders_quarantined";
/// histogram: storage batch commit time, fdatasync included.
pub const STORAGE_COMMIT_DURATION: &str = "payd_storage_commit_duration_seconds";
/// histogram: commands per group commit.
pub const STORAGE_BATCH_SIZE: &str = "payd_storage_batch_commands";
/// counter: storage commits that failed.
pub const STORAGE_COMMIT_FAILURES: &str = "payd_storage_commit_failures_total";
/// gauge: 1 while storage accepts writes.
pub const STORAGE_HEALTHY: &str = "payd_storage_healthy";
/// counter: log lines dropped because the log output could not keep up.
pub const LOG_LINES_DROPPED: &str = "payd_log_lines_dropped_total";

// ---- Alerts ----
/// gauge {rule, severity}: the monitor's alerts active now.
pub const ALERTS_FIRING: &str = "payd_alerts_firing";
/// counter {rule, severity}: alerts fired.
pub const ALERTS_FIRED: &str = "payd_alerts_fired_total";

// ---- Reconciliation ----
/// counter {provider, result}: reconciliation runs (`completed` or `failed`).
pub const RECON_RUNS: &str = "payd_reconciliation_runs_total";
/// counter {provider, kind}: discrepancies found (a re-run of a day counts again).
pub const RECON_DISCREPANCIES: &str = "payd_reconciliation_discrepancies_total";
/// gauge {provider}: unresolved discrepancies in the provider's latest run.
pub const RECON_UNRESOLVED: &str = "payd_reconciliation_unresolved";

/// Providers whose statements payd reconciles (labels of the reconciliation metrics).
pub const RECON_PROVIDERS: [&str; 4] = ["wechat_v3", "wechat_v2", "alipay", "stripe"];

/// Providers whose callbacks payd receives (labels of the callback metrics).
pub const CALLBACK_PROVIDERS: [&str; 3] = ["wechat", "alipay", "stripe"];
/// Executors' provider labels (see `providers::*::setup`).
pub const CALL_PROVIDERS: [&str; 4] = ["wechat", "wechat_v2_refund", "alipay", "stripe"];
/// Outbound operations every provider adapter names.
pub const CALL_OPERATIONS: [&str; 5] = ["create", "query", "close", "refund", "refund_query"];
/// Rate-limit route classes.
pub const RATE_CLASSES: [&str; 3] = ["payment", "read", "callback"];
/// Rejections that happen before a provider's own checks.
pub const SOURCE_NOT_ALLOWED: &str = "source_not_allowed";

const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it) and registers
/// every metric at zero for the label values known from `currencies` and `methods`.
pub fn init(currencies: &[String]) -> Option<PrometheusHandle> {
    let handle = HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(STORAGE_BATCH_SIZE.into()),
                        &BATCH_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(h) => {
                    describe();
                    Some(h)
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone();
    register_known(currencies);
    handle
}

/// The metrics text for a scrape (after folding recent samples in).
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(h)) => {
            h.run_upkeep();
            h.render()
        }
        _ => String::new(),
    }
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request"
    );
    describe_counter!(RATE_LIMITED, "Requests refused with 429, by route class");
    describe_gauge!(RATE_LIMIT_BUCKETS, "Token buckets held by the rate limiter");
    describe_counter!(
        ORDERS_CREATED,
        "Orders created, by payment method and currency"
    );
    describe_counter!(
        ORDER_TRANSITIONS,
        "Durable order status changes, by from, to and payment method"
    );
    describe_counter!(PAYMENTS, "Orders that became paid, by currency");
    describe_counter!(PAYMENT_AMOUNT, "Amount paid in minor units, by currency");
    describe_counter!(REFUNDS, "Refunds that succeeded, by currency");
    describe_counter!(REFUND_AMOUNT, "Amount refunded in minor units, by currency");
    describe_counter!(
        LARGE_PAYMENTS,
        "Payments above monitor.large_transaction, by currency"
    );
    describe_counter!(LATE_PAYMENTS, "Payments confirmed after cancel or expiry");
    describe_counter!(ANOMALIES, "Order anomalies opened, by kind");
    describe_counter!(
        PROVIDER_CALLS,
        "Outbound provider call attempts, by provider and operation"
    );
    describe_counter!(
        PROVIDER_ERRORS,
        "Failed provider call attempts (transport error or 5xx)"
    );
    describe_histogram!(
        PROVIDER_DURATION,
        Unit::Seconds,
        "Provider call attempt latency"
    );
    describe_gauge!(
        PROVIDER_CIRCUIT_OPEN,
        "1 while a provider's circuit breaker is open"
    );
    describe_counter!(
        CALLBACKS_RECEIVED,
        "Provider callbacks received, by provider"
    );
    describe_counter!(
        CALLBACKS_VERIFIED,
        "Provider callbacks verified and acknowledged, by provider"
    );
    describe_counter!(
        CALLBACKS_REJECTED,
        "Provider callbacks refused, by provider and reason"
    );
    describe_counter!(
        CALLBACKS_DEDUPLICATED,
        "Repeated callbacks answered from the recent-event cache"
    );
    describe_counter!(
        RECON_RUNS,
        "Reconciliation runs, by provider and result (completed or failed)"
    );
    describe_counter!(
        RECON_DISCREPANCIES,
        "Reconciliation discrepancies found, by provider and kind"
    );
    describe_gauge!(
        RECON_UNRESOLVED,
        "Unresolved discrepancies in each provider's latest reconciliation"
    );
    describe_gauge!(ORDER_ACTORS_LIVE, "Order actors alive now");
    describe_counter!(
        ORDER_ACTOR_RESTARTS,
        "Order actors restarted after a failure"
    );
    describe_gauge!(
        ORDERS_QUARANTINED,
        "Orders quarantined after exhausting their restart budget"
    );
    describe_histogram!(
        STORAGE_COMMIT_DURATION,
        Unit::Seconds,
        "Storage group commit time, sync included"
    );
    describe_histogram!(STORAGE_BATCH_SIZE, "Commands per storage group commit");
    describe_counter!(STORAGE_COMMIT_FAILURES, "Storage commits that failed");
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log output could not keep up"
    );
    describe_gauge!(STORAGE_HEALTHY, "1 while storage accepts writes");
    describe_gauge!(
        ALERTS_FIRING,
        "The monitor's active alerts, by rule and severity"
    );
    describe_counter!(
        ALERTS_FIRED,
        "Alerts fired by the monitor, by rule and severity"
    );
}

/// Every counter at zero for every known label value, and the sampled gauges.
fn register_known(currencies: &[String]) {
    for method in ["GET", "POST"] {
        counter!(HTTP_REQUESTS, "route" => "/healthz", "method" => method, "status" => "200")
            .increment(0);
    }
    for class in RATE_CLASSES {
        counter!(RATE_LIMITED, "class" => class).increment(0);
    }
    for currency in currencies {
        let c = currency.clone();
        counter!(PAYMENTS, "currency" => c.clone()).increment(0);
        counter!(PAYMENT_AMOUNT, "currency" => c.clone()).increment(0);
        counter!(REFUNDS, "currency" => c.clone()).increment(0);
        counter!(REFUND_AMOUNT, "currency" => c.clone()).increment(0);
        counter!(LARGE_PAYMENTS, "currency" => c.clone()).increment(0);
        for method in PaymentMethod::ALL {
            counter!(ORDERS_CREATED, "method" => method.as_str(), "currency" => c.clone())
                .increment(0);
        }
    }
    counter!(LATE_PAYMENTS).increment(0);
    for kind in [
        AnomalyKind::AmountMismatch,
        AnomalyKind::DoublePayment,
        AnomalyKind::LatePaymentRefund,
        AnomalyKind::Dispute,
        AnomalyKind::RefundAbnormal,
        AnomalyKind::ClawbackShortfall,
    ] {
        counter!(ANOMALIES, "kind" => kind.as_str()).increment(0);
    }
    for to in [
        OrderStatus::Paid,
        OrderStatus::Failed,
        OrderStatus::Expired,
        OrderStatus::Cancelled,
    ] {
        for method in PaymentMethod::ALL {
            counter!(ORDER_TRANSITIONS, "from" => OrderStatus::Pending.as_str(), "to" => to.as_str(), "method" => method.as_str())
                .increment(0);
        }
    }
    for provider in CALL_PROVIDERS {
        for op in CALL_OPERATIONS {
            counter!(PROVIDER_CALLS, "provider" => provider, "operation" => op).increment(0);
            counter!(PROVIDER_ERRORS, "provider" => provider, "operation" => op).increment(0);
            let _ = histogram!(PROVIDER_DURATION, "provider" => provider, "operation" => op);
        }
        gauge!(PROVIDER_CIRCUIT_OPEN, "provider" => provider).increment(0.0);
    }
    for provider in CALLBACK_PROVIDERS {
        counter!(CALLBACKS_RECEIVED, "provider" => provider).increment(0);
        counter!(CALLBACKS_VERIFIED, "provider" => provider).increment(0);
        counter!(CALLBACKS_DEDUPLICATED, "provider" => provider).increment(0);
        for reason in RejectReason::ALL {
            counter!(CALLBACKS_REJECTED, "provider" => provider, "reason" => reason.as_str())
                .increment(0);
        }
        counter!(CALLBACKS_REJECTED, "provider" => provider, "reason" => SOURCE_NOT_ALLOWED)
            .increment(0);
    }
    for provider in RECON_PROVIDERS {
        for result in ["completed", "failed"] {
            counter!(RECON_RUNS, "provider" => provider, "result" => result).increment(0);
        }
        for kind in payd_actors::reconcile::DiscrepancyKind::ALL {
            counter!(RECON_DISCREPANCIES, "provider" => provider, "kind" => kind.as_str())
                .increment(0);
        }
        gauge!(RECON_UNRESOLVED, "provider" => provider).increment(0.0);
    }
    counter!(ORDER_ACTOR_RESTARTS).increment(0);
    counter!(STORAGE_COMMIT_FAILURES).increment(0);
    counter!(LOG_LINES_DROPPED).increment(0);
    let _ = histogram!(STORAGE_COMMIT_DURATION);
    let _ = histogram!(STORAGE_BATCH_SIZE);
    for rule in Rule::ALL {
        for severity in Severity::ALL {
            counter!(ALERTS_FIRED, "rule" => rule.as_str(), "severity" => severity.as_str())
                .increment(0);
            gauge!(ALERTS_FIRING, "rule" => rule.as_str(), "severity" => severity.as_str())
                .increment(0.0);
        }
    }
}

/// A reconciliation run ended: its result, what it found, and what is left open.
pub fn reconciliation(report: &payd_actors::reconcile::ReconReport, completed: bool) {
    let provider = RECON_PROVIDERS
        .into_iter()
        .find(|p| *p == report.provider)
        .unwrap_or("other");
    let result = if completed { "completed" } else { "failed" };
    counter!(RECON_RUNS, "provider" => provider, "result" => result).increment(1);
    if completed {
        for d in &report.discrepancies {
            counter!(RECON_DISCREPANCIES, "provider" => provider, "kind" => d.kind.as_str())
                .increment(1);
        }
        gauge!(RECON_UNRESOLVED, "provider" => provider).set(report.unresolved() as f64);
    }
}

/// The unresolved gauge of `provider` (at start-up, from storage).
pub fn reconciliation_unresolved(provider: &str, unresolved: usize) {
    if let Some(p) = RECON_PROVIDERS.into_iter().find(|p| *p == provider) {
        gauge!(RECON_UNRESOLVED, "provider" => p).set(unresolved as f64);
    }
}

/// A method label from a bounded set.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub fn http_request(route: &str, method: &'static str, status: u16, elapsed: Duration) {
    // Looking a series up in the recorder (label strings built, the key hashed,
    // the registry searched) was about 5 000 instructions a request: once payd's own
    // recorder is installed — it is process-wide and never replaced — the handles
    // of each (route, method, status) are kept and reused.
    if matches!(HANDLE.get(), Some(Some(_))) {
        let (requests, duration) = http_handles(route, method, status);
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
        return;
    }
    let (requests, duration) = http_series(route, method, status);
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

fn http_series(route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
    (
        counter!(HTTP_REQUESTS, "route" => route.to_string(), "method" => method, "status" => status.to_string()),
        histogram!(HTTP_DURATION, "route" => route.to_string(), "method" => method),
    )
}

/// The request series' handles, by route, then method and status. Bounded like the
/// labels: route templates (or "unmatched"), a fixed set of methods, status codes.
type HttpHandles = HashMap<String, Vec<((&'static str, u16), (Counter, Histogram))>>;

static HTTP_HANDLES: LazyLock<Mutex<HttpHandles>> = LazyLock::new(Mutex::default);

fn http_handles(route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
    let mut handles = HTTP_HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = handles
        .get(route)
        .and_then(|by| by.iter().find(|(k, _)| *k == (method, status)))
    {
        return found.1.clone();
    }
    let series = http_series(route, method, status);
    handles
        .entry(route.to_string())
        .or_default()
        .push(((method, status), series.clone()));
    series
}

pub fn rate_limited(class: &'static str) {
    counter!(RATE_LIMITED, "class" => class).increment(1);
}

pub fn provider_call(provider: &'static str, op: &'static str, ok: bool, elapsed: Duration) {
    counter!(PROVIDER_CALLS, "provider" => provider, "operation" => op).increment(1);
    if !ok {
        counter!(PROVIDER_ERRORS, "provider" => provider, "operation" => op).increment(1);
    }
    histogram!(PROVIDER_DURATION, "provider" => provider, "operation" => op)
        .record(elapsed.as_secs_f64());
}

pub fn circuit(provider: &'static str, open: bool) {
    gauge!(PROVIDER_CIRCUIT_OPEN, "provider" => provider).set(if open { 1.0 } else { 0.0 });
}

pub fn callback_received(provider: &'static str) {
    counter!(CALLBACKS_RECEIVED, "provider" => provider).increment(1);
}

pub fn callback_verified(provider: &'static str) {
    counter!(CALLBACKS_VERIFIED, "provider" => provider).increment(1);
}

pub fn callback_rejected(provider: &'static str, reason: &'static str) {
    counter!(CALLBACKS_REJECTED, "provider" => provider, "reason" => reason).increment(1);
}

pub fn callback_deduplicated(provider: &'static str) {
    counter!(CALLBACKS_DEDUPLICATED, "provider" => provider).increment(1);
}

/// Storage's commit reports, as metrics.
pub fn commit_observer() -> CommitObserver {
    CommitObserver(std::sync::Arc::new(|r: CommitReport| {
        histogram!(STORAGE_COMMIT_DURATION).record(r.elapsed.as_secs_f64());
        histogram!(STORAGE_BATCH_SIZE).record(r.commands as f64);
        if !r.ok {
            counter!(STORAGE_COMMIT_FAILURES).increment(1);
        }
    }))
}

/// Order metrics from every durable transition. Bounded labels only: statuses,
/// methods, currencies, anomaly kinds.
pub struct OrderMetrics {
    /// `monitor.large_transaction`: minor units per currency.
    pub large_transaction: std::collections::BTreeMap<String, i64>,
}

impl payd_actors::order::OrderObserver for OrderMetrics {
    fn transition(
        &self,
        before: &payd_actors::model::Order,
        after: &payd_actors::model::Order,
        _event: &str,
    ) {
        transition(before, after, &self.large_transaction);
    }
}

fn transition(
    before: &payd_actors::model::Order,
    after: &payd_actors::model::Order,
    large_transaction: &std::collections::BTreeMap<String, i64>,
) {
    let method = after.payment_method.as_str();
    let currency = after.currency.as_str().to_string();
    if before.version == 0 {
        counter!(ORDERS_CREATED, "method" => method, "currency" => currency.clone()).increment(1);
    }
    if before.status != after.status {
        counter!(ORDER_TRANSITIONS, "from" => before.status.as_str(), "to" => after.status.as_str(), "method" => method)
            .increment(1);
        if after.status == OrderStatus::Paid && !before.status.is_paid() {
            counter!(PAYMENTS, "currency" => currency.clone()).increment(1);
            counter!(PAYMENT_AMOUNT, "currency" => currency.clone())
                .increment(after.amount_minor.max(0) as u64);
            if large_transaction
                .get(&currency)
                .is_some_and(|limit| after.amount_minor > *limit)
            {
                counter!(LARGE_PAYMENTS, "currency" => currency.clone()).increment(1);
            }
            if after.late_payment {
                counter!(LATE_PAYMENTS).increment(1);
            }
        }
    }
    for refund in &after.refunds {
        let done = |r: &payd_actors::model::RefundEntry| {
            r.state == payd_actors::model::RefundState::Succeeded
        };
        if done(refund)
            && !before
                .refunds
                .iter()
                .any(|r| r.refund_no == refund.refund_no && done(r))
        {
            counter!(REFUNDS, "currency" => currency.clone()).increment(1);
            counter!(REFUND_AMOUNT, "currency" => currency.clone())
                .increment(refund.amount_minor.max(0) as u64);
        }
    }
    for anomaly in after.anomalies.iter().skip(before.anomalies.len()) {
        counter!(ANOMALIES, "kind" => anomaly.kind.as_str()).increment(1);
    }
}

/// Counts alerts as the monitor fires them.
pub struct AlertMetrics;

impl AlertSink for AlertMetrics {
    fn changed(&self, alert: &Alert) {
        if alert.resolved_at.is_none() {
            counter!(ALERTS_FIRED, "rule" => alert.rule.as_str(), "severity" => alert.severity.as_str())
                .increment(1);
        }
    }
}

/// Sets the gauges that mirror state held elsewhere, just before a scrape.
pub fn sample(
    live_actors: Option<(usize, u64, usize)>,
    storage_healthy: bool,
    buckets: usize,
    active_alerts: Option<&[Alert]>,
) {
    if let Some((live, restarts, quarantined)) = live_actors {
        gauge!(ORDER_ACTORS_LIVE).set(live as f64);
        counter!(ORDER_ACTOR_RESTARTS).absolute(restarts);
        gauge!(ORDERS_QUARANTINED).set(quarantined as f64);
    }
    gauge!(STORAGE_HEALTHY).set(if storage_healthy { 1.0 } else { 0.0 });
    gauge!(RATE_LIMIT_BUCKETS).set(buckets as f64);
    if let Some(active) = active_alerts {
        for rule in Rule::ALL {
            for severity in Severity::ALL {
                let n = active
                    .iter()
                    .filter(|a| a.rule == rule && a.severity == severity)
                    .count();
                gauge!(ALERTS_FIRING, "rule" => rule.as_str(), "severity" => severity.as_str())
                    .set(n as f64);
            }
        }
    }
}

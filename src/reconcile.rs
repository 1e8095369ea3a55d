//! Reconciliation runs: fetch a provider's statement of a day, compare it with
//! payd's orders (`payd_actors::reconcile::compare`), repair what the rule says
//! through the orders' actors, and store the report.
//!
//! One run at a time (a mutex): two runs of the same day could otherwise both see
//! a payment as missing. A statement that cannot be fetched or read fails the run
//! before anything is compared, so a bad file changes no order. Repairs go through
//! the supervisor like a provider query's answer does; the machine decides what a
//! payment found only in the statement means (paid and granted, refunded under the
//! late-payment rule, a double payment, an amount mismatch).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use payd_actors::clock::SharedClock;
use payd_actors::commands;
use payd_actors::model::{Order, ProviderKind};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::supervisor::SupervisorMsg;
use payd_actors::reconcile::{
    self, DiscrepancyKind, ReconReport, Resolution, RunStatus, Statement,
};
use payd_actors::tables::{ORDERS, RECONCILIATIONS};
use payd_storage::Store;
use ractor::ActorRef;
use ractor::rpc::CallResult;

use crate::providers::statement::{StatementDay, StatementError, StatementSource};

/// Why a run could not even start (a failed statement is a run, stored as failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("unknown or unconfigured provider {0:?}")]
    UnknownProvider(String),
    #[error("date {0:?} must be YYYY-MM-DD")]
    BadDate(String),
    #[error("storage: {0}")]
    Storage(String),
}

/// A run's outcome: the stored report, and the statement error when it failed.
pub struct RunOutcome {
    pub report: ReconReport,
    pub error: Option<StatementError>,
}

pub struct Reconciler {
    store: Store,
    supervisor: ActorRef<SupervisorMsg>,
    clock: SharedClock,
    sources: Vec<(ProviderKind, Arc<dyn StatementSource>)>,
    ask_timeout: Duration,
    running: tokio::sync::Mutex<()>,
}

impl Reconciler {
    pub fn new(
        store: Store,
        supervisor: ActorRef<SupervisorMsg>,
        clock: SharedClock,
        sources: Vec<(ProviderKind, Arc<dyn StatementSource>)>,
        ask_timeout: Duration,
    ) -> Self {
        Reconciler {
            store,
            supervisor,
            clock,
            sources,
            ask_timeout,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// The providers with statements, by name.
    pub fn providers(&self) -> Vec<&'static str> {
        self.sources.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn source(&self, name: &str) -> Option<(ProviderKind, Arc<dyn StatementSource>)> {
        self.sources
            .iter()
            .find(|(k, _)| {
                k.as_str() == name
                    || (name == "wechat"
                        && matches!(k, ProviderKind::WechatV3 | ProviderKind::WechatV2))
            })
            .cloned()
    }

    /// The statement day that closed most recently for each provider at `now`: the
    /// day before today in the provider's time zone.
    pub fn due_days(&self) -> Vec<(&'static str, String)> {
        let now = self.clock.now();
        self.sources
            .iter()
            .map(|(k, s)| {
                let day = StatementDay::containing(now, s.offset_hours()).previous();
                (k.as_str(), day.iso())
            })
            .collect()
    }

    /// Reconciles `provider`'s statement of `date`.
    pub async fn run(&self, provider: &str, date: &str) -> Result<RunOutcome, RunError> {
        let (kind, source) = self
            .source(provider)
            .ok_or_else(|| RunError::UnknownProvider(provider.to_string()))?;
        let day = StatementDay::parse(date, source.offset_hours())
            .ok_or_else(|| RunError::BadDate(date.to_string()))?;
        let _one_at_a_time = self.running.lock().await;
        let started_at = self.clock.now();
        let name = kind.as_str();
        tracing::info!(provider = name, date = %day.iso(), "reconciliation started");
        let fetched = source.fetch(day).await;
        let (report, error) = match fetched {
            Err(e) => {
                tracing::error!(provider = name, date = %day.iso(), error = %e,
                    "reconciliation failed: statement unusable, nothing changed");
                let report = ReconReport {
                    provider: name.to_string(),
                    date: day.iso(),
                    status: RunStatus::Failed,
                    failure: Some(e.to_string()),
                    started_at,
                    finished_at: self.clock.now(),
                    runs: 0,
                    statement_rows: 0,
                    totals: vec![],
                    fees: vec![],
                    discrepancies: vec![],
                };
                (report, Some(e))
            }
            Ok(statement) => (
                self.compare_and_repair(kind, day, statement, started_at)
                    .await?,
                None,
            ),
        };
        let saved = commands::save_reconciliation(&self.store, report)
            .await
            .map_err(|e| RunError::Storage(e.to_string()))?;
        crate::metrics::reconciliation(&saved, error.is_none());
        if error.is_none() {
            tracing::info!(provider = name, date = %saved.date, rows = saved.statement_rows,
                discrepancies = saved.discrepancies.len(), unresolved = saved.unresolved(),
                "reconciliation completed");
        }
        Ok(RunOutcome {
            report: saved,
            error,
        })
    }

    async fn compare_and_repair(
        &self,
        kind: ProviderKind,
        day: StatementDay,
        statement: Statement,
        started_at: payd_actors::model::Timestamp,
    ) -> Result<ReconReport, RunError> {
        let window = day.window();
        let view = self
            .store
            .read()
            .map_err(|e| RunError::Storage(e.to_string()))?;
        let named: HashSet<&str> = statement.rows.iter().map(|r| r.order_no.as_str()).collect();
        let orders: HashMap<String, Order> = view
            .scan_prefix(&ORDERS, &(), usize::MAX, false)
            .map_err(|e| RunError::Storage(e.to_string()))?
            .into_iter()
            .map(|(_, o)| o)
            .filter(|o| {
                named.contains(o.order_no.as_str())
                    || (o.provider == kind && reconcile::concerns_day(o, window))
            })
            .map(|o| (o.order_no.clone(), o))
            .collect();
        let previous = view
            .get(&RECONCILIATIONS, &(kind.as_str().to_string(), day.iso()))
            .map_err(|e| RunError::Storage(e.to_string()))?;
        drop(view);
        let mut found = reconcile::compare(&statement, &orders, window, previous.as_ref());
        for repair in std::mem::take(&mut found.repairs) {
            let d = &mut found.discrepancies[repair.discrepancy];
            let refund = matches!(
                repair.event,
                payd_actors::order::machine::Event::RefundResult { .. }
            );
            match self.ask(&repair.order_no, repair.event).await {
                Ok(order) => {
                    d.outcome = if refund {
                        "refund recorded as succeeded".into()
                    } else {
                        reconcile::payment_outcome(&order, &d.transaction_id)
                    };
                    tracing::warn!(order_no = %repair.order_no, kind = d.kind.as_str(),
                        transaction_id = %d.transaction_id, outcome = %d.outcome,
                        "reconciliation repaired an order from the statement");
                }
                Err(e) => {
                    tracing::error!(order_no = %repair.order_no, error = %e,
                        "reconciliation could not repair the order; reported instead");
                    d.resolution = Resolution::Unresolved;
                    d.outcome = format!("repair failed: {e}; the next run tries again");
                }
            }
        }
        for d in &found.discrepancies {
            if d.resolution == Resolution::Unresolved && d.kind != DiscrepancyKind::PaidNotRecorded
            {
                tracing::warn!(order_no = %d.order_no, kind = d.kind.as_str(),
                    transaction_id = %d.transaction_id, "reconciliation discrepancy reported");
            }
        }
        Ok(ReconReport {
            provider: kind.as_str().to_string(),
            date: day.iso(),
            status: RunStatus::Completed,
            failure: None,
            started_at,
            finished_at: self.clock.now(),
            runs: 0,
            statement_rows: found.statement_rows,
            totals: found.totals,
            fees: found.fees,
            discrepancies: found.discrepancies,
        })
    }

    async fn ask(
        &self,
        order_no: &str,
        event: payd_actors::order::machine::Event,
    ) -> Result<Order, String> {
        let order_no = order_no.to_string();
        let answer = self
            .supervisor
            .call(
                |reply| SupervisorMsg::Route {
                    order_no,
                    command: OrderCommand::Event(event),
                    reply: Some(reply),
                },
                Some(self.ask_timeout),
            )
            .await;
        match answer {
            Ok(CallResult::Success(r)) => r.map_err(|e| e.to_string()),
            Ok(CallResult::Timeout) => Err("the order did not answer in time".into()),
            Ok(CallResult::SenderError) | Err(_) => Err("the order actor is unavailable".into()),
        }
    }
}

/// Runs every provider's previous day once a day at `reconciliation.time`, in the
/// statement's own time zone for WeChat and Alipay (Beijing) and UTC for Stripe. A
/// day already completed is not run again; a failed one is retried hourly until it
/// completes (statements can be late).
pub fn spawn_daily(reconciler: Arc<Reconciler>, time: &str) -> tokio::task::JoinHandle<()> {
    let (h, m) = time
        .split_once(':')
        .and_then(|(h, m)| Some((h.parse::<i64>().ok()?, m.parse::<i64>().ok()?)))
        .unwrap_or((10, 30));
    let at_ms = (h * 60 + m) * 60_000;
    tokio::spawn(async move {
        loop {
            let now = reconciler.clock.now();
            for (kind, source) in reconciler.sources.clone() {
                let offset = source.offset_hours();
                let local_ms = (now.ms() + i64::from(offset) * 3_600_000).rem_euclid(86_400_000);
                if local_ms < at_ms {
                    continue;
                }
                let day = StatementDay::containing(now, offset).previous();
                let done = reconciler
                    .store
                    .read()
                    .ok()
                    .and_then(|v| {
                        v.get(&RECONCILIATIONS, &(kind.as_str().to_string(), day.iso()))
                            .ok()
                            .flatten()
                    })
                    .map(|r| {
                        r.status == RunStatus::Completed
                            || now.ms() - r.finished_at.ms() < 3_600_000
                    })
                    .unwrap_or(false);
                if !done && let Err(e) = reconciler.run(kind.as_str(), &day.iso()).await {
                    tracing::error!(provider = kind.as_str(), error = %e, "daily reconciliation did not run");
                }
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    })
}

/// The report as CSV: one line per discrepancy with its evidence, after the totals.
pub fn to_csv(r: &ReconReport) -> String {
    fn cell(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from(
        "kind,resolution,order_no,transaction_id,refund_no,currency,statement_amount_minor,payd_amount_minor,outcome,evidence\r\n",
    );
    for d in &r.discrepancies {
        let fields = [
            d.kind.as_str().to_string(),
            d.resolution.as_str().to_string(),
            d.order_no.clone(),
            d.transaction_id.clone(),
            d.refund_no.clone().unwrap_or_default(),
            d.currency.as_str().to_string(),
            d.statement_amount_minor
                .map(|a| a.to_string())
                .unwrap_or_default(),
            d.payd_amount_minor
                .map(|a| a.to_string())
                .unwrap_or_default(),
            d.outcome.clone(),
            d.evidence.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| cell(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

// ---- statement sources ----

pub struct WechatV3Statements(pub Arc<crate::providers::wechat::v3::WechatV3>);

impl StatementSource for WechatV3Statements {
    fn offset_hours(&self) -> i8 {
        8
    }
    fn fetch(
        &self,
        day: StatementDay,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Statement, StatementError>> + Send + '_>,
    > {
        Box::pin(self.0.trade_bill(day))
    }
}

pub struct AlipayStatements(pub Arc<crate::providers::alipay::Alipay>);

impl StatementSource for AlipayStatements {
    fn offset_hours(&self) -> i8 {
        8
    }
    fn fetch(
        &self,
        day: StatementDay,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Statement, StatementError>> + Send + '_>,
    > {
        Box::pin(self.0.trade_bill(day))
    }
}

pub struct StripeStatements(pub Arc<crate::providers::stripe::Stripe>);

impl StatementSource for StripeStatements {
    fn offset_hours(&self) -> i8 {
        0
    }
    fn fetch(
        &self,
        day: StatementDay,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Statement, StatementError>> + Send + '_>,
    > {
        Box::pin(self.0.balance_statement(day))
    }
}

pub struct WechatV2Statements(pub Arc<crate::providers::wechat::v2::WechatV2>);

impl StatementSource for WechatV2Statements {
    fn offset_hours(&self) -> i8 {
        8
    }
    fn fetch(
        &self,
        day: StatementDay,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Statement, StatementError>> + Send + '_>,
    > {
        Box::pin(self.0.trade_bill(day))
    }
}

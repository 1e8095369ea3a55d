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
use payd_actors::model::{Order, ProviderKind, Timestamp};
use payd_actors::order::actor::OrderCommand;
use payd_actors::order::supervisor::SupervisorMsg;
use payd_actors::reconcile::{
    self, DiscrepancyKind, ReconReport, Resolution, RunStatus, Statement,
};
use payd_actors::tables::{ORDERS, RECONCILIATIONS};
use payd_storage::Store;
use ractor::ActorRef;
use ractor::rpc::CallResult;

use crate::providers::statement::{StatementDay, StatementError, StatementFuture, StatementSource};

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

    /// Sets the unresolved gauge from each provider's latest completed day in
    /// storage, so a restart does not hide differences until the next run.
    pub fn publish_stored(&self) {
        let Ok(view) = self.store.read() else { return };
        let Ok(all) = commands::list_reconciliations(&view) else {
            return;
        };
        for (kind, _) in &self.sources {
            if let Some(latest) = all
                .iter()
                .find(|r| r.provider == kind.as_str() && r.status == RunStatus::Completed)
            {
                crate::metrics::reconciliation_unresolved(&latest.provider, latest.unresolved());
            }
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
        started_at: Timestamp,
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

/// The statement day due at `now` for a provider whose days are in UTC+`offset_hours`,
/// with the daily run at `at_minutes` past local midnight: yesterday (local), once
/// the local time of day has reached the run time; nothing before.
pub fn due_day(now: Timestamp, at_minutes: i64, offset_hours: i8) -> Option<StatementDay> {
    let local_ms = (now.ms() + i64::from(offset_hours) * 3_600_000).rem_euclid(86_400_000);
    (local_ms >= at_minutes * 60_000)
        .then(|| StatementDay::containing(now, offset_hours).previous())
}

/// Runs every provider's previous day once a day at `reconciliation.time`, in the
/// statement's own time zone for WeChat and Alipay (Beijing) and UTC for Stripe. A
/// day already completed is not run again; a failed one is retried hourly until it
/// completes (statements can be late). The first check comes a minute after start,
/// so a restart is not slowed by a download.
pub fn spawn_daily(reconciler: Arc<Reconciler>, time: &str) -> tokio::task::JoinHandle<()> {
    let (h, m) = time
        .split_once(':')
        .and_then(|(h, m)| Some((h.parse::<i64>().ok()?, m.parse::<i64>().ok()?)))
        .unwrap_or((10, 30));
    let at_minutes = h * 60 + m;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let now = reconciler.clock.now();
            for (kind, source) in reconciler.sources.clone() {
                let Some(day) = due_day(now, at_minutes, source.offset_hours()) else {
                    continue;
                };
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

// ---- statement sources: each provider adapter is one ----

macro_rules! statement_source {
    ($provider:ty, $offset_hours:expr, $fetch:ident) => {
        impl StatementSource for $provider {
            fn offset_hours(&self) -> i8 {
                $offset_hours
            }
            fn fetch(&self, day: StatementDay) -> StatementFuture<'_> {
                Box::pin(self.$fetch(day))
            }
        }
    };
}

// WeChat Pay and Alipay close their statements on Beijing days, Stripe on UTC days.
statement_source!(crate::providers::wechat::v3::WechatV3, 8, trade_bill);
statement_source!(crate::providers::wechat::v2::WechatV2, 8, trade_bill);
statement_source!(crate::providers::alipay::Alipay, 8, trade_bill);
statement_source!(crate::providers::stripe::Stripe, 0, balance_statement);

/// One line per run for the CLI.
fn describe(r: &ReconReport) -> String {
    match r.status {
        RunStatus::Failed => format!(
            "{} {}: failed: {}",
            r.provider,
            r.date,
            r.failure.as_deref().unwrap_or("unknown reason")
        ),
        RunStatus::Completed => {
            let repaired = r.discrepancies.len() - r.unresolved();
            format!(
                "{} {}: completed, {} statement rows, {} discrepancies ({} repaired, {} unresolved)",
                r.provider,
                r.date,
                r.statement_rows,
                r.discrepancies.len(),
                repaired,
                r.unresolved()
            )
        }
    }
}

/// `payd reconcile --date YYYY-MM-DD [--provider NAME]`. While payd runs (it holds
/// the database) the running server is asked through the admin API, with a
/// short-lived admin token; otherwise payd is started in-process on a loopback port
/// for the run and stopped again. `Err` when any run failed.
pub async fn reconcile_command(
    cfg: crate::config::Config,
    date: &str,
    provider: Option<String>,
    url: Option<String>,
) -> Result<String, String> {
    let in_use = crate::backup::in_use(&cfg.storage.path).map_err(|e| e.to_string())?;
    if !in_use {
        let mut cfg = cfg;
        cfg.server.bind = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.server.metrics_bind = None;
        let app = crate::app::Application::build(cfg)
            .await
            .map_err(|e| format!("{e:#}"))?;
        let reconciler = app.state().reconciler.clone();
        let names: Vec<String> = match provider {
            Some(p) => vec![p],
            None => reconciler
                .providers()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut lines = Vec::new();
        let mut failed = false;
        for name in names {
            match reconciler.run(&name, date).await {
                Ok(o) => {
                    failed |= o.error.is_some();
                    lines.push(describe(&o.report));
                }
                Err(e) => {
                    failed = true;
                    lines.push(format!("{name} {date}: {e}"));
                }
            }
        }
        app.stop().await;
        if lines.is_empty() {
            return Err("no provider with statements is configured".into());
        }
        let out = format!("(payd was not running)\n{}", lines.join("\n"));
        return if failed { Err(out) } else { Ok(out) };
    }
    let base = url.unwrap_or_else(|| crate::backup::local_url(&cfg));
    let base = base.trim_end_matches('/').to_string();
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let token = crate::auth::Jwt::new(&cfg.auth).mint("payd-reconcile-cli", true, now_secs, 600);
    let client = reqwest::Client::new();
    let unreachable = |e: reqwest::Error| {
        format!(
            "payd holds {} but does not answer at {base}: {} (use --url)",
            cfg.storage.path.display(),
            e.without_url()
        )
    };
    let names: Vec<String> = match provider {
        Some(p) => vec![p],
        None => {
            let list: serde_json::Value = client
                .get(format!("{base}/api/v1/admin/reconciliations"))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(unreachable)?
                .json()
                .await
                .map_err(|e| format!("payd's answer: {e}"))?;
            list["providers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        }
    };
    if names.is_empty() {
        return Err("no provider with statements is configured".into());
    }
    let mut lines = Vec::new();
    let mut failed = false;
    for name in names {
        let resp = client
            .post(format!("{base}/api/v1/admin/reconciliations"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"provider": name, "date": date}))
            .send()
            .await
            .map_err(unreachable)?;
        let ok = resp.status().is_success();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if ok {
            lines.push(format!(
                "{} {}: completed, {} statement rows, {} discrepancies ({} unresolved)",
                body["provider"].as_str().unwrap_or(&name),
                date,
                body["statement_rows"],
                body["discrepancies_count"],
                body["unresolved"]
            ));
        } else {
            failed = true;
            lines.push(format!(
                "{name} {date}: failed: {}",
                body["detail"].as_str().unwrap_or("no detail")
            ));
        }
    }
    let out = lines.join("\n");
    if failed { Err(out) } else { Ok(out) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::statement::wall_time;

    #[test]
    fn the_daily_run_takes_yesterday_of_the_statements_own_time_zone_once_its_time_has_come() {
        let at = 10 * 60 + 30;
        // 02:29 UTC is 10:29 in Beijing: not yet; 02:30 is: Beijing's 21st.
        let t = |s: &str| wall_time(s, 0).unwrap();
        assert_eq!(due_day(t("2026-11-22 02:29:59"), at, 8), None);
        assert_eq!(
            due_day(t("2026-11-22 02:30:00"), at, 8).unwrap().iso(),
            "2026-11-21"
        );
        // 17:00 UTC is 01:00 on the 23rd in Beijing: the 22nd is not due until 10:30.
        assert_eq!(due_day(t("2026-11-22 17:00:00"), at, 8), None);
        assert_eq!(
            due_day(t("2026-11-23 03:00:00"), at, 8).unwrap().iso(),
            "2026-11-22"
        );
        // Stripe's days are UTC.
        assert_eq!(due_day(t("2026-11-22 10:29:00"), at, 0), None);
        assert_eq!(
            due_day(t("2026-11-22 10:30:00"), at, 0).unwrap().iso(),
            "2026-11-21"
        );
    }
}

#[cfg(test)]
mod measure {
    /// `cargo test --lib reconcile_100k -- --ignored --nocapture`: parsing a
    /// 100 000-row WeChat bill and a 100 000-row Alipay zip, timed.
    #[test]
    #[ignore = "a measurement; run by hand"]
    fn reconcile_100k_statement_rows_parsed() {
        const N: usize = 100_000;
        let header = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";
        let mut bill = format!("{header}\r\n");
        for i in 0..N {
            bill.push_str(&format!(
                "`2026-11-22 20:00:00,`wx01,`1900000001,`0,`,`4200{i:024},`PD2611220000{i:018},`oBuyer,`NATIVE,`SUCCESS,`OTHERS,`CNY,`9.90,`0.00,`0,`0,`0.00,`0.00,`,`,`basic,`,`0.05940,`0.60%,`9.90,`0.00,`\r\n"
            ));
        }
        bill.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n");
        bill.push_str(&format!("`{N},`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00\r\n"));
        let started = std::time::Instant::now();
        let s = crate::providers::wechat::bill::parse_trade_bill(&bill).unwrap();
        let wechat = started.elapsed();
        assert_eq!(s.rows.len(), N);

        use crate::providers::alipay::bill;
        let rows: Vec<String> = (0..N)
            .map(|i| {
                bill::detail_row(
                    &format!("2026112222001{i:015}"),
                    &format!("PD2611220000{i:018}"),
                    "2026-11-22 20:00:00",
                    990,
                    None,
                )
            })
            .collect();
        let zip = bill::bill_zip(
            "2088000000000001",
            "2026-11-22",
            &bill::detail_text("2088000000000001", "2026-11-22", &rows),
        );
        let started = std::time::Instant::now();
        let s = bill::parse_bill_zip(&zip).unwrap();
        let alipay = started.elapsed();
        assert_eq!(s.rows.len(), N);
        println!(
            "parse: WeChat bill {N} rows ({} KiB) in {:.1} ms; Alipay zip {N} rows ({} KiB zipped) in {:.1} ms",
            bill.len() / 1024,
            wechat.as_secs_f64() * 1000.0,
            zip.len() / 1024,
            alipay.as_secs_f64() * 1000.0
        );
    }
}

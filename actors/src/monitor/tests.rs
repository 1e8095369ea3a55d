//! Every alert rule driven through a scripted sequence of facts with an injected
//! clock: it fires once, stays quiet while it holds, and resolves when it clears.

use super::*;
use crate::model::*;

const T0: Timestamp = Timestamp(1_800_000_000_000);
const SEC: i64 = 1000;
const MIN: i64 = 60 * SEC;

fn core() -> MonitorCore {
    MonitorCore::new(MonitorSettings::default())
}

fn paid(core: &mut MonitorCore, now: Timestamp, user: &str, currency: &str, amount: i64) {
    core.record(
        Fact::Paid {
            order_no: format!("PD{}{user}", now.ms()),
            user_id: user.into(),
            currency: currency.into(),
            amount_minor: amount,
            late: false,
        },
        now,
    );
}

fn failed(core: &mut MonitorCore, now: Timestamp) {
    core.record(
        Fact::Settled {
            outcome: Outcome::Failed,
            currency: "CNY".into(),
            amount_minor: 990,
        },
        now,
    );
}

/// The rules of the alerts active after evaluating at `now`.
fn active(core: &mut MonitorCore, now: Timestamp) -> Vec<(Rule, String)> {
    core.evaluate(now);
    core.active()
        .into_iter()
        .map(|a| (a.rule, a.subject))
        .collect()
}

fn fired(changes: &[Alert], rule: Rule) -> usize {
    changes
        .iter()
        .filter(|a| a.rule == rule && a.resolved_at.is_none())
        .count()
}

fn resolved(changes: &[Alert], rule: Rule) -> usize {
    changes
        .iter()
        .filter(|a| a.rule == rule && a.resolved_at.is_some())
        .count()
}

#[test]
fn failure_rate_fires_once_above_the_threshold_and_resolves_when_it_falls() {
    let mut m = core();
    for i in 0..17 {
        paid(&mut m, T0.plus_ms(i), &format!("u{i}"), "CNY", 990);
    }
    for i in 0..2 {
        failed(&mut m, T0.plus_ms(100 + i));
    }
    // 2 / 19 is above 10 %, but 19 decided orders are below min_volume (20).
    assert!(m.evaluate(T0.plus_ms(SEC)).is_empty());
    failed(&mut m, T0.plus_ms(2 * SEC));
    let changes = m.evaluate(T0.plus_ms(3 * SEC));
    assert_eq!(fired(&changes, Rule::FailureRate), 1);
    let alert = &m.active()[0];
    assert_eq!(alert.severity, Severity::Critical);
    assert!((alert.value.unwrap() - 0.15).abs() < 1e-9, "{alert:?}");
    // Still failing: nothing new fires.
    assert!(m.evaluate(T0.plus_ms(4 * SEC)).is_empty());
    for i in 0..20 {
        paid(
            &mut m,
            T0.plus_ms(5 * SEC + i),
            &format!("v{i}"),
            "CNY",
            990,
        );
    }
    let changes = m.evaluate(T0.plus_ms(6 * SEC));
    assert_eq!(resolved(&changes, Rule::FailureRate), 1);
    assert!(m.active().is_empty());
    let (history, total) = m.history(1, 10);
    assert_eq!(total, 1);
    assert_eq!(history[0].fired_at, T0.plus_ms(3 * SEC));
    assert_eq!(history[0].resolved_at, Some(T0.plus_ms(6 * SEC)));
}

#[test]
fn one_failure_out_of_one_order_pages_nobody() {
    let mut m = core();
    failed(&mut m, T0);
    assert!(active(&mut m, T0.plus_ms(SEC)).is_empty());
    let status = m.status(T0.plus_ms(SEC));
    assert_eq!(status.window.failure_rate, Some(1.0));
    assert_eq!(status.health, "ok");
}

#[test]
fn failure_rate_resolves_when_the_failures_leave_the_window() {
    let mut m = core();
    for i in 0..10 {
        paid(&mut m, T0.plus_ms(i), "u", "CNY", 990);
        failed(&mut m, T0.plus_ms(i));
    }
    // Ten payments from one user in a second are also rapid payments.
    let rules: Vec<Rule> = active(&mut m, T0.plus_ms(SEC))
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert!(rules.contains(&Rule::FailureRate), "{rules:?}");
    assert!(active(&mut m, T0.plus_ms(61 * MIN)).is_empty());
}

#[test]
fn refund_rate_by_amount_fires_per_currency_and_resolves() {
    let mut m = core();
    for i in 0..20 {
        paid(&mut m, T0.plus_ms(i * SEC), &format!("u{i}"), "USD", 1000);
    }
    m.record(
        Fact::Refunded {
            currency: "USD".into(),
            amount_minor: 1000,
        },
        T0.plus_ms(30 * SEC),
    );
    // 1000 of 20000 is exactly 5 %: not above.
    assert!(active(&mut m, T0.plus_ms(31 * SEC)).is_empty());
    m.record(
        Fact::Refunded {
            currency: "USD".into(),
            amount_minor: 500,
        },
        T0.plus_ms(32 * SEC),
    );
    let changes = m.evaluate(T0.plus_ms(33 * SEC));
    assert_eq!(fired(&changes, Rule::RefundRate), 1);
    assert_eq!(m.active()[0].subject, "USD");
    let status = m.status(T0.plus_ms(33 * SEC));
    assert_eq!(status.window.refund_rate_by_amount["USD"], 0.075);
    assert_eq!(status.window.refund_rate_by_count, Some(0.1));
    let changes = m.evaluate(T0.plus_ms(62 * MIN));
    assert_eq!(resolved(&changes, Rule::RefundRate), 1);
}

#[test]
fn a_payment_above_its_currency_threshold_alerts_once() {
    let mut m = core();
    paid(&mut m, T0, "a", "CNY", 100_000);
    paid(&mut m, T0, "b", "USD", 20_000);
    paid(&mut m, T0, "c", "EUR", 99_999_999);
    assert!(
        active(&mut m, T0.plus_ms(SEC)).is_empty(),
        "at the limit, or no limit"
    );
    paid(&mut m, T0.plus_ms(2 * SEC), "d", "CNY", 100_001);
    let changes = m.evaluate(T0.plus_ms(3 * SEC));
    assert_eq!(fired(&changes, Rule::LargePayment), 1);
    assert!(changes[0].message.contains("100001 CNY"), "{changes:?}");
    assert!(m.evaluate(T0.plus_ms(4 * SEC)).is_empty());
    assert_eq!(m.status(T0.plus_ms(4 * SEC)).window.tally.large_payments, 1);
    let changes = m.evaluate(T0.plus_ms(2 * SEC + 61 * MIN));
    assert_eq!(resolved(&changes, Rule::LargePayment), 1);
}

#[test]
fn a_late_payment_alerts() {
    let mut m = core();
    m.record(
        Fact::Paid {
            order_no: "PD1".into(),
            user_id: "u".into(),
            currency: "CNY".into(),
            amount_minor: 990,
            late: true,
        },
        T0,
    );
    assert_eq!(
        active(&mut m, T0.plus_ms(SEC)),
        vec![(Rule::LatePayment, "PD1".to_string())]
    );
    assert!(active(&mut m, T0.plus_ms(61 * MIN)).is_empty());
}

#[test]
fn a_burst_of_provider_errors_alerts_and_resolves_after_the_burst_window() {
    let mut m = core();
    for i in 0..4 {
        m.record(
            Fact::ProviderCall {
                provider: "wechat",
                ok: false,
                latency_ms: 2000,
            },
            T0.plus_ms(i * SEC),
        );
    }
    m.record(
        Fact::ProviderCall {
            provider: "wechat",
            ok: true,
            latency_ms: 50,
        },
        T0.plus_ms(5 * SEC),
    );
    assert!(active(&mut m, T0.plus_ms(6 * SEC)).is_empty());
    m.record(
        Fact::ProviderCall {
            provider: "wechat",
            ok: false,
            latency_ms: 2000,
        },
        T0.plus_ms(7 * SEC),
    );
    let changes = m.evaluate(T0.plus_ms(8 * SEC));
    assert_eq!(fired(&changes, Rule::ProviderErrors), 1);
    assert_eq!(changes[0].subject, "wechat");
    let p = m.status(T0.plus_ms(8 * SEC)).window.tally.providers["wechat"];
    assert_eq!((p.calls, p.errors, p.latency_ms_max), (6, 5, 2000));
    let changes = m.evaluate(T0.plus_ms(8 * SEC + 6 * MIN));
    assert_eq!(resolved(&changes, Rule::ProviderErrors), 1);
}

#[test]
fn an_open_circuit_breaker_alerts_until_it_closes() {
    let mut m = core();
    m.record(
        Fact::Breaker {
            provider: "alipay",
            open: true,
        },
        T0,
    );
    let changes = m.evaluate(T0);
    assert_eq!(fired(&changes, Rule::CircuitOpen), 1);
    assert_eq!(m.status(T0).open_breakers, vec!["alipay"]);
    assert_eq!(m.status(T0).health, "critical");
    m.record(
        Fact::Breaker {
            provider: "alipay",
            open: false,
        },
        T0.plus_ms(SEC),
    );
    let changes = m.evaluate(T0.plus_ms(SEC));
    assert_eq!(resolved(&changes, Rule::CircuitOpen), 1);
    assert_eq!(m.status(T0.plus_ms(SEC)).health, "ok");
}

#[test]
fn storage_errors_alert_while_writes_are_refused_and_shortly_after() {
    let mut m = core();
    let sample = |m: &mut MonitorCore, healthy, failed_commits, at| {
        m.record(
            Fact::Storage {
                healthy,
                failed_commits,
            },
            at,
        )
    };
    sample(&mut m, true, 3, T0);
    assert!(
        active(&mut m, T0).is_empty(),
        "failures before start are old news"
    );
    sample(&mut m, false, 4, T0.plus_ms(SEC));
    let changes = m.evaluate(T0.plus_ms(SEC));
    assert_eq!(fired(&changes, Rule::StorageErrors), 1);
    assert!(!m.status(T0.plus_ms(SEC)).storage_healthy);
    sample(&mut m, true, 4, T0.plus_ms(2 * SEC));
    assert!(
        m.evaluate(T0.plus_ms(2 * SEC)).is_empty(),
        "the failure is recent"
    );
    sample(&mut m, true, 4, T0.plus_ms(6 * MIN));
    let changes = m.evaluate(T0.plus_ms(6 * MIN));
    assert_eq!(resolved(&changes, Rule::StorageErrors), 1);
}

#[test]
fn anomalies_alert_until_an_admin_resolves_them() {
    let mut m = core();
    for (index, kind) in [AnomalyKind::AmountMismatch, AnomalyKind::DoublePayment]
        .into_iter()
        .enumerate()
    {
        m.record(
            Fact::Anomaly {
                order_no: "PD9".into(),
                index,
                kind,
                resolved: false,
            },
            T0,
        );
    }
    let changes = m.evaluate(T0);
    assert_eq!(fired(&changes, Rule::Anomaly), 2);
    assert!(changes.iter().all(|a| a.severity == Severity::Critical));
    m.record(
        Fact::Anomaly {
            order_no: "PD9".into(),
            index: 0,
            kind: AnomalyKind::AmountMismatch,
            resolved: true,
        },
        T0.plus_ms(SEC),
    );
    let changes = m.evaluate(T0.plus_ms(SEC));
    assert_eq!(resolved(&changes, Rule::Anomaly), 1);
    assert_eq!(changes[0].subject, "PD9#0");
    assert_eq!(m.active().len(), 1);
    assert_eq!(m.status(T0).window.tally.anomalies["double_payment"], 1);
}

#[test]
fn a_spike_of_rejected_callbacks_alerts_per_provider() {
    let mut m = core();
    for i in 0..19 {
        m.record(
            Fact::CallbackRejected {
                provider: "stripe",
                reason: "bad_signature",
            },
            T0.plus_ms(i * SEC),
        );
    }
    m.record(
        Fact::CallbackRejected {
            provider: "wechat",
            reason: "bad_signature",
        },
        T0,
    );
    assert!(active(&mut m, T0.plus_ms(20 * SEC)).is_empty());
    m.record(
        Fact::CallbackRejected {
            provider: "stripe",
            reason: "stale_timestamp",
        },
        T0.plus_ms(21 * SEC),
    );
    assert_eq!(
        active(&mut m, T0.plus_ms(22 * SEC)),
        vec![(Rule::RejectedCallbacks, "stripe".to_string())]
    );
    assert_eq!(
        m.status(T0.plus_ms(22 * SEC)).window.tally.rejected[&("stripe", "bad_signature")],
        19
    );
    assert!(active(&mut m, T0.plus_ms(7 * MIN)).is_empty());
    assert_eq!(m.history(1, 10).0[0].rule, Rule::RejectedCallbacks);
}

#[test]
fn one_user_paying_many_times_quickly_alerts() {
    let mut m = core();
    for i in 0..4 {
        paid(&mut m, T0.plus_ms(i * MIN), "eve", "CNY", 990);
        paid(&mut m, T0.plus_ms(i * 3 * MIN), "bob", "CNY", 990);
    }
    assert!(active(&mut m, T0.plus_ms(9 * MIN)).is_empty());
    paid(&mut m, T0.plus_ms(9 * MIN), "eve", "CNY", 990);
    assert_eq!(
        active(&mut m, T0.plus_ms(9 * MIN)),
        vec![(Rule::RapidPayments, "eve".to_string())]
    );
    paid(&mut m, T0.plus_ms(12 * MIN), "bob", "CNY", 990);
    let changes = m.evaluate(T0.plus_ms(12 * MIN));
    assert_eq!(resolved(&changes, Rule::RapidPayments), 1);
    assert!(
        m.active().is_empty(),
        "bob's five payments are spread over more than ten minutes"
    );
}

#[test]
fn status_reports_counts_rates_and_active_users_for_the_window_and_the_day() {
    let mut m = core();
    let created = |m: &mut MonitorCore, user: &str, at| {
        m.record(
            Fact::Created {
                user_id: user.into(),
                currency: "CNY".into(),
                amount_minor: 990,
            },
            at,
        )
    };
    created(&mut m, "old", T0);
    let later = T0.plus_ms(2 * 60 * MIN);
    for user in ["a", "b", "a"] {
        created(&mut m, user, later);
    }
    paid(&mut m, later, "a", "CNY", 990);
    for outcome in [Outcome::Expired, Outcome::Cancelled, Outcome::Failed] {
        m.record(
            Fact::Settled {
                outcome,
                currency: "CNY".into(),
                amount_minor: 990,
            },
            later,
        );
    }
    let s = m.status(later);
    assert_eq!(s.window.counts.created, 3);
    assert_eq!(s.day.counts.created, 4);
    assert_eq!(s.window.active_users, 2);
    assert_eq!(s.day.active_users, 3);
    assert_eq!(s.window.success_rate, Some(0.25));
    assert_eq!(s.window.failure_rate, Some(0.5));
    assert_eq!(s.window.abandonment_rate, Some(0.5));
    assert_eq!(s.window.tally.currencies["CNY"].paid.amount_minor, 990);
}

#[test]
fn the_history_is_bounded_and_paged_newest_first() {
    let mut m = MonitorCore::new(MonitorSettings {
        history: 5,
        ..MonitorSettings::default()
    });
    for i in 0..8 {
        m.record(
            Fact::Anomaly {
                order_no: format!("PD{i}"),
                index: 0,
                kind: AnomalyKind::Dispute,
                resolved: false,
            },
            T0,
        );
        m.evaluate(T0.plus_ms(i));
    }
    let (page, total) = m.history(1, 2);
    assert_eq!(total, 5);
    assert_eq!(page[0].subject, "PD7#0");
    assert_eq!(m.history(3, 2).0.len(), 1);
    assert_eq!(m.active().len(), 8, "active alerts outlive the history");
}

#[test]
fn per_user_state_stays_bounded_under_a_flood_of_users() {
    let mut m = core();
    for i in 0..(MAX_TRACKED_USERS as i64 + 10) {
        m.record(
            Fact::Created {
                user_id: format!("u{i}"),
                currency: "CNY".into(),
                amount_minor: 1,
            },
            T0.plus_ms(i),
        );
    }
    assert!(m.users.len() <= MAX_TRACKED_USERS);
    assert!(m.users.contains_key(&format!("u{}", MAX_TRACKED_USERS + 9)));
}

fn order() -> Order {
    Order::for_tests(
        PackageSnapshot {
            name: "basic".into(),
            kind: PackageKind::Points,
            membership_type: None,
            validity_days: None,
            queries_count: None,
            points: Some(10),
            bonus_points: None,
        },
        990,
        T0,
    )
}

#[test]
fn transitions_become_facts() {
    let created = order();
    let mut opened = created.clone();
    opened.trade_opened = true;
    opened.version = 1;
    assert!(matches!(
        facts_of(&created, &opened)[..],
        [Fact::Created { .. }]
    ));

    let mut paid = opened.clone();
    paid.status = OrderStatus::Paid;
    paid.version = 2;
    assert!(matches!(
        facts_of(&opened, &paid)[..],
        [Fact::Paid { late: false, .. }]
    ));

    let mut refunding = paid.clone();
    refunding.refunds.push(RefundEntry {
        refund_no: "R1".into(),
        amount_minor: 500,
        reason: "r".into(),
        state: RefundState::Processing,
        provider_refund_id: None,
        created_at: T0,
        finished_at: None,
        requested_by: crate::model::Actor::Admin,
        failure_reason: None,
        transaction_id: None,
        hold: EntitlementHold::default(),
        attempts: 0,
    });
    assert!(facts_of(&paid, &refunding).is_empty());
    let mut refunded = refunding.clone();
    refunded.refunds[0].state = RefundState::Succeeded;
    refunded.status = OrderStatus::PartiallyRefunded;
    assert_eq!(
        facts_of(&refunding, &refunded),
        vec![Fact::Refunded {
            currency: "CNY".into(),
            amount_minor: 500
        }]
    );

    let mut doubled = paid.clone();
    doubled.anomalies.push(Anomaly {
        kind: AnomalyKind::DoublePayment,
        transaction_id: "t2".into(),
        amount_minor: 990,
        currency: Currency::parse("CNY").unwrap(),
        detail: String::new(),
        at: T0,
        resolved: false,
    });
    assert!(matches!(
        facts_of(&paid, &doubled)[..],
        [Fact::Anomaly {
            resolved: false,
            index: 0,
            ..
        }]
    ));
    let mut settled = doubled.clone();
    settled.anomalies[0].resolved = true;
    assert!(matches!(
        facts_of(&doubled, &settled)[..],
        [Fact::Anomaly { resolved: true, .. }]
    ));

    let mut expired = opened.clone();
    expired.status = OrderStatus::Expired;
    let mut late = expired.clone();
    late.status = OrderStatus::Paid;
    late.late_payment = true;
    assert!(matches!(
        facts_of(&opened, &expired)[..],
        [Fact::Settled {
            outcome: Outcome::Expired,
            ..
        }]
    ));
    assert!(matches!(
        facts_of(&expired, &late)[..],
        [Fact::Paid { late: true, .. }]
    ));
}

//! Reconciliation end to end: payd downloads the provider's statement of a day from
//! the sandbox over real HTTP (signed request, verified hash, the real file format),
//! compares it with its orders, repairs what the statement proves and reports the
//! rest; a statement it cannot trust fails the run and changes nothing.

use std::time::Duration;

use payd_actors::model::{OrderStatus, PaymentSource, RefundState};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, now_secs, order_no};
use crate::wechat_sandbox::*;

async fn start_wechat() -> (TestApp, WechatSandbox) {
    let sandbox = WechatSandbox::start().await;
    let app = TestApp::spawn_real(&[], &payd_config(&sandbox)).await;
    (app, sandbox)
}

async fn run(app: &TestApp, provider: &str, date: &str) -> (StatusCode, Value) {
    app.post(
        "/api/v1/admin/reconciliations",
        &app.admin_token(),
        Some(json!({"provider": provider, "date": date})),
    )
    .await
}

fn discrepancies(report: &Value) -> Vec<(String, String, String)> {
    let mut v: Vec<(String, String, String)> = report["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["order_no"].as_str().unwrap().to_string(),
                d["resolution"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn total(report: &Value, category: &str) -> (u64, i64) {
    report["totals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["category"] == category)
        .fold((0, 0), |(c, a), t| {
            (
                c + t["count"].as_u64().unwrap(),
                a + t["amount"].as_i64().unwrap(),
            )
        })
}

/// Orders and entitlements: what a statement run may change.
fn money_state(app: &TestApp) -> Vec<(Vec<u8>, Vec<u8>)> {
    let view = app.app().state().store.read().unwrap();
    ["orders", "entitlements", "history"]
        .into_iter()
        .flat_map(|t| view.raw_entries(t).unwrap())
        .collect()
}

/// A sample from `/metrics` (the recorder is process-wide: other tests add to it).
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_bill_with_every_discrepancy_is_categorised_and_the_lost_payment_granted_once() {
    let (app, sandbox) = start_wechat().await;
    let admin = app.admin_token();
    let buyer = |name: &str| app.token(name);
    let new_order = |token: String| {
        let app = &app;
        async move { order_no(&app.order(&token, "basic", "wechat_native").await) }
    };

    // A: paid and notified — matched. Later refunded in part through payd — matched.
    let (ua, ub, uc, ud, uf) = (
        buyer("ra"),
        buyer("rb"),
        buyer("rc"),
        buyer("rd"),
        buyer("rf"),
    );
    let a = new_order(ua.clone()).await;
    sandbox.pay(&a, None);
    sandbox.notify(&a).await;
    app.wait_for_status(&ua, &a, "paid", Duration::from_secs(5))
        .await;
    let (s, body) = app
        .post(
            &format!("/api/v1/admin/orders/{a}/refunds"),
            &admin,
            Some(json!({"amount": 100, "reason": "goodwill"})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    // D: paid and notified, and refunded in full — but the bill shows neither.
    let d = new_order(ud.clone()).await;
    sandbox.pay(&d, None);
    sandbox.notify(&d).await;
    app.wait_for_status(&ud, &d, "paid", Duration::from_secs(5))
        .await;
    let (s, body) = app
        .post(
            &format!("/api/v1/admin/orders/{d}/refunds"),
            &admin,
            Some(json!({"reason": "test"})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    wait_until("both refunds succeed", || {
        [&a, &d].iter().all(|no| {
            app.stored_order(no)
                .refunds
                .iter()
                .all(|r| r.state == RefundState::Succeeded)
        })
    })
    .await;
    let d_refund = app.stored_order(&d).refunds[0].refund_no.clone();

    // B: the buyer paid, but every callback was lost and every query answered NOTPAY:
    // payd expired the order. Only the bill knows.
    let b = new_order(ub.clone()).await;
    sandbox.sb.unseen.lock().unwrap().push(b.clone());
    let b_tx = sandbox.pay(&b, None);
    // C: likewise lost, and paid 1 fen short.
    let c = new_order(uc.clone()).await;
    sandbox.sb.unseen.lock().unwrap().push(c.clone());
    sandbox.pay(&c, Some(989));
    app.wait_for_status(&ub, &b, "expired", Duration::from_secs(15))
        .await;
    app.wait_for_status(&uc, &c, "expired", Duration::from_secs(15))
        .await;
    assert_eq!(app.entitlements(&ub).await["membership"], Value::Null);
    // F: pending, never paid in payd; the bill lists a USD payment for it.
    let f = new_order(uf.clone()).await;

    let now = now_secs() as i64;
    {
        let mut bill = sandbox.sb.bill.lock().unwrap();
        bill.hide_orders.push(d.clone());
        bill.hide_refunds.push(d_refund.clone());
        bill.extra_rows.push(bill_row(
            now,
            "4200000UNKNOWN",
            "PD000000000000UNKNOWNORDER000",
            "CNY",
            500,
            None,
        ));
        bill.extra_rows
            .push(bill_row(now, "4200000CURRENCY", &f, "USD", 990, None));
        let a_tx = app.stored_order(&a).provider_transaction_id.unwrap();
        bill.extra_rows.push(bill_row(
            now,
            &a_tx,
            &a,
            "CNY",
            990,
            Some(("5030CONSOLE", "RF-MADE-IN-CONSOLE", 50)),
        ));
    }

    let today = beijing_today();
    let (status, first) = run(&app, "wechat_v3", &today).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "completed");
    assert_eq!(
        discrepancies(&first),
        {
            let mut want = vec![
                (
                    "paid_not_recorded".to_string(),
                    b.clone(),
                    "repaired".to_string(),
                ),
                ("amount_mismatch".into(), c.clone(), "unresolved".into()),
                ("currency_mismatch".into(), f.clone(), "unresolved".into()),
                ("missing_at_provider".into(), d.clone(), "unresolved".into()),
                (
                    "refund_missing_at_provider".into(),
                    d.clone(),
                    "unresolved".into(),
                ),
                ("refund_not_recorded".into(), a.clone(), "unresolved".into()),
                (
                    "unknown_order".into(),
                    "PD000000000000UNKNOWNORDER000".into(),
                    "unresolved".into(),
                ),
            ];
            want.sort();
            want
        },
        "{first:#}"
    );
    assert_eq!(total(&first, "matched"), (1, 990), "A's payment");
    assert_eq!(total(&first, "matched_refund"), (1, 100), "A's refund");
    assert_eq!(first["unresolved"], 6);
    // Fees: 0.6 % of 9.90 + 9.90 (A, B) + 9.89 (C) + 9.90 (F, USD) + 5.00 − 1.00 − 0.50.
    let fee = |cur: &str| {
        first["fees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["currency"] == cur)
            .map(|f| f["fee_milli_minor"].as_i64().unwrap())
    };
    assert_eq!(fee("CNY"), Some(600 * (990 + 990 + 989 + 500 - 100 - 50)));
    assert_eq!(fee("USD"), Some(600 * 990));
    // The evidence is the bill's own line.
    let evidence = first["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "paid_not_recorded")
        .unwrap()["evidence"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(evidence.contains(&format!("`{b_tx},`{b},")), "{evidence}");

    // B is paid now, as a late payment under the grant policy, and granted once.
    let stored_b = app.stored_order(&b);
    assert_eq!(stored_b.status, OrderStatus::Paid);
    assert!(stored_b.late_payment && stored_b.granted);
    assert_eq!(stored_b.payments.len(), 1);
    assert_eq!(stored_b.payments[0].source, PaymentSource::Reconciliation);
    let queries = app.entitlements(&ub).await["membership"]["queries_remaining"].clone();
    assert_eq!(queries, 100);
    // C: recorded as an amount-mismatch anomaly on the order, nothing granted.
    let stored_c = app.stored_order(&c);
    assert_eq!(stored_c.status, OrderStatus::Expired);
    assert_eq!(stored_c.anomalies.len(), 1);
    assert!(!stored_c.granted);
    assert_eq!(app.entitlements(&uc).await["membership"], Value::Null);
    let stored_f = app.stored_order(&f);
    assert!(!stored_f.granted && stored_f.status != OrderStatus::Paid);

    // A second run of the day: the same report, no second repair or grant.
    let before = money_state(&app);
    let (status, second) = run(&app, "wechat_v3", &today).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(discrepancies(&second), discrepancies(&first));
    assert_eq!(second["totals"], first["totals"]);
    assert_eq!(second["fees"], first["fees"]);
    assert_eq!(second["runs"], 2);
    assert!(
        money_state(&app) == before,
        "a re-run changed orders or entitlements"
    );
    assert_eq!(
        app.entitlements(&ub).await["membership"]["queries_remaining"],
        100
    );

    // An operator settles the unknown order's row; a third run keeps it settled.
    let unknown = second["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "unknown_order")
        .unwrap()["index"]
        .as_u64()
        .unwrap();
    let repaired = second["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "paid_not_recorded")
        .unwrap()["index"]
        .as_u64()
        .unwrap();
    let resolve = |index: u64, reason: &str| {
        let (app, admin, today) = (&app, &admin, &today);
        let body = json!({ "reason": reason });
        async move {
            app.post(
                &format!(
                    "/api/v1/admin/reconciliations/wechat_v3/{today}/discrepancies/{index}/resolve"
                ),
                admin,
                Some(body),
            )
            .await
        }
    };
    let (s, body) = resolve(unknown, "test order of the integration team").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["unresolved"], 5);
    let (s, body) = resolve(unknown, "again").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("discrepancy_not_open"))
    );
    let (s, body) = resolve(repaired, "nothing to settle").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("discrepancy_not_open"))
    );
    let (s, body) = resolve(99, "no such row").await;
    assert_eq!(
        (s, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, body) = resolve(unknown, " ").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, third) = run(&app, "wechat_v3", &today).await;
    assert_eq!(third["unresolved"], 5);
    let settled = &third["discrepancies"][unknown as usize];
    assert_eq!(settled["resolution"], "resolved");
    assert!(
        settled["outcome"]
            .as_str()
            .unwrap()
            .contains("test order of the integration team")
    );

    // Listed, shown in detail, exported as CSV.
    let (s, list) = app.get("/api/v1/admin/reconciliations", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"][0]["date"], today.as_str());
    assert_eq!(list["items"][0]["unresolved"], 5);
    let (s, detail) = app
        .get(
            &format!("/api/v1/admin/reconciliations/wechat_v3/{today}"),
            &admin,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(detail["discrepancies"], third["discrepancies"]);
    let csv = app
        .client
        .get(format!(
            "{}/api/v1/admin/reconciliations/wechat_v3/{today}?format=csv",
            app.base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 1 + 7, "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("paid_not_recorded,repaired,") && l.contains(&b))
    );
    // Metrics count it.
    assert!(
        metric(
            &app,
            "payd_reconciliation_runs_total{provider=\"wechat_v3\",result=\"completed\"}"
        )
        .await
            >= 2.0
    );
    assert!(metric(&app, "payd_reconciliation_discrepancies_total{provider=\"wechat_v3\",kind=\"paid_not_recorded\"}").await >= 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_bill_that_cannot_be_trusted_fails_the_run_and_changes_nothing() {
    let (app, sandbox) = start_wechat().await;
    let u = app.token("lost");
    let no = order_no(&app.order(&u, "basic", "wechat_native").await);
    sandbox.sb.unseen.lock().unwrap().push(no.clone());
    sandbox.pay(&no, None);
    let today = beijing_today();
    for (fault, reason) in [
        (BillFault::BadHash, "integrity check failed"),
        (BillFault::Truncated, "without its summary"),
        (BillFault::UnknownColumn, "unknown column \"结算状态\""),
        (BillFault::NotUtf8, "not UTF-8"),
    ] {
        sandbox.sb.bill.lock().unwrap().fault = Some(fault);
        let before = money_state(&app);
        let (status, body) = run(&app, "wechat_v3", &today).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{fault:?}: {body}"
        );
        assert_eq!(body["code"], "statement_invalid");
        assert!(
            body["detail"].as_str().unwrap().contains(reason),
            "{fault:?}: {body}"
        );
        assert!(money_state(&app) == before, "{fault:?} changed orders");
        assert_eq!(app.stored_order(&no).status, OrderStatus::Pending);
    }
    let (_, detail) = app
        .get(
            &format!("/api/v1/admin/reconciliations/wechat_v3/{today}"),
            &app.admin_token(),
        )
        .await;
    assert_eq!(detail["status"], "failed");
    assert_eq!(detail["runs"], 4);
    assert!(
        metric(
            &app,
            "payd_reconciliation_runs_total{provider=\"wechat_v3\",result=\"failed\"}"
        )
        .await
            >= 4.0
    );
    // Once the bill is sound, the same day completes and the payment is found.
    sandbox.sb.bill.lock().unwrap().fault = None;
    let (status, body) = run(&app, "wechat_v3", &today).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.stored_order(&no).status, OrderStatus::Paid);
    // A day with no bill, an unknown provider and a bad date are refused clearly.
    let (status, body) = run(&app, "wechat_v3", "2001-01-01").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("statement_unavailable")),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("NO_STATEMENT_EXIST"),
        "{body}"
    );
    let (status, body) = run(&app, "paypal", &today).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("provider_unavailable")
        )
    );
    let (status, body) = run(&app, "wechat_v3", "22-11-2026").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
        "{body}"
    );
    app.stop().await;
}

async fn start_alipay() -> (TestApp, crate::alipay_sandbox::AlipaySandbox) {
    let sandbox = crate::alipay_sandbox::AlipaySandbox::start().await;
    let app = TestApp::spawn_real(&[], &crate::alipay::payd_config(&sandbox)).await;
    (app, sandbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alipay_bill_zip_finds_the_lost_payment_and_reports_the_rest() {
    use crate::alipay_sandbox::bill_row as alipay_row;
    let (app, sandbox) = start_alipay().await;
    let admin = app.admin_token();
    let (ua, ub, ud) = (app.token("aa"), app.token("ab"), app.token("ad"));
    // A: paid and notified, then refunded in part through payd: matched twice.
    let a = order_no(&app.order(&ua, "basic", "alipay_qr").await);
    sandbox.pay(&a, None);
    sandbox.notify(&a).await;
    app.wait_for_status(&ua, &a, "paid", Duration::from_secs(5))
        .await;
    let (s, body) = app
        .post(
            &format!("/api/v1/admin/orders/{a}/refunds"),
            &admin,
            Some(json!({"amount": 190, "reason": "partial"})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    wait_until("A's refund succeeds", || {
        app.stored_order(&a)
            .refunds
            .iter()
            .all(|r| r.state == RefundState::Succeeded)
    })
    .await;
    // B: paid at Alipay; every notify and query lost; payd expired it.
    let b = order_no(&app.order(&ub, "basic", "alipay_qr").await);
    sandbox.sb.unseen.lock().unwrap().push(b.clone());
    let b_trade = sandbox.pay(&b, None);
    app.wait_for_status(&ub, &b, "expired", Duration::from_secs(15))
        .await;
    // D: paid in payd, missing from the bill.
    let d = order_no(&app.order(&ud, "coins_100", "alipay_qr").await);
    sandbox.pay(&d, None);
    sandbox.notify(&d).await;
    app.wait_for_status(&ud, &d, "paid", Duration::from_secs(5))
        .await;
    {
        let mut bill = sandbox.sb.bill.lock().unwrap();
        bill.hide_orders.push(d.clone());
        let a_trade = sandbox.trade(&a).unwrap().trade_no;
        bill.extra_rows
            .push(alipay_row(&a_trade, &a, 300, Some("REFUND-AT-ALIPAY")));
        bill.extra_rows.push(alipay_row(
            "2026000000UNKNOWN",
            "PD000000000000ALIPAYUNKNOWN00",
            100,
            None,
        ));
    }
    let today = beijing_today();
    let before_untrusted = money_state(&app);
    for (fault, reason) in [
        (
            crate::alipay_sandbox::BillFault::TruncatedZip,
            "does not open",
        ),
        (crate::alipay_sandbox::BillFault::Utf8Inside, "UTF-8"),
        (
            crate::alipay_sandbox::BillFault::UnknownColumn,
            "unknown column \"花呗分期（元）\"",
        ),
    ] {
        sandbox.sb.bill.lock().unwrap().fault = Some(fault);
        let (status, body) = run(&app, "alipay", &today).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{fault:?}: {body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains(reason),
            "{fault:?}: {body}"
        );
        assert_eq!(
            app.stored_order(&b).status,
            OrderStatus::Expired,
            "{fault:?} repaired"
        );
    }
    assert!(
        money_state(&app) == before_untrusted,
        "an untrusted bill changed orders"
    );
    sandbox.sb.bill.lock().unwrap().fault = None;

    let (status, first) = run(&app, "alipay", &today).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let mut want = vec![
        (
            "paid_not_recorded".to_string(),
            b.clone(),
            "repaired".to_string(),
        ),
        ("missing_at_provider".into(), d.clone(), "unresolved".into()),
        ("refund_not_recorded".into(), a.clone(), "unresolved".into()),
        (
            "unknown_order".into(),
            "PD000000000000ALIPAYUNKNOWN00".into(),
            "unresolved".into(),
        ),
    ];
    want.sort();
    assert_eq!(discrepancies(&first), want, "{first:#}");
    assert_eq!(total(&first, "matched"), (1, 990));
    assert_eq!(total(&first, "matched_refund"), (1, 190));
    // Alipay's fee: 0.6 % to the fen on trades (A, B, unknown), given back on refunds.
    let fees = first["fees"][0]["fee_milli_minor"].as_i64().unwrap();
    assert_eq!(fees, (6 + 6 + 1 - 1 - 2) * 1000, "{first}");
    let evidence = first["discrepancies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "paid_not_recorded")
        .unwrap()["evidence"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        evidence.starts_with(&format!("{b_trade}\t,{b}\t,交易\t")),
        "{evidence}"
    );
    let stored_b = app.stored_order(&b);
    assert_eq!(stored_b.status, OrderStatus::Paid);
    assert!(stored_b.late_payment && stored_b.granted);
    assert_eq!(
        app.entitlements(&ub).await["membership"]["queries_remaining"],
        100
    );

    let before = money_state(&app);
    let (status, second) = run(&app, "alipay", &today).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(discrepancies(&second), discrepancies(&first));
    assert_eq!(second["totals"], first["totals"]);
    assert!(
        money_state(&app) == before,
        "a re-run changed orders or entitlements"
    );
    app.stop().await;
}

fn utc_today() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_balance_transactions_are_paged_through_and_a_payment_payd_never_heard_of_is_granted()
 {
    // Polling every 30 s keeps payd's own queries out of the way: it never learns
    // of B's payment except from the balance.
    let (app, sandbox) = crate::stripe::start("60s", "30s").await;
    let admin = app.admin_token();
    *sandbox.sb.balance_page_max.lock().unwrap() = 2;
    let (ua, ub, ud) = (app.token("sa"), app.token("sb"), app.token("sd"));
    let a = order_no(&app.order(&ua, "usd_pack", "stripe_checkout").await);
    let a_pi = sandbox.pay(&a, None, None);
    sandbox.send_session(&a, "checkout.session.completed").await;
    app.wait_for_status(&ua, &a, "paid", Duration::from_secs(5))
        .await;
    let (s, body) = app
        .post(
            &format!("/api/v1/admin/orders/{a}/refunds"),
            &admin,
            Some(json!({"amount": 99, "reason": "partial"})),
        )
        .await;
    assert!(s.is_success(), "{body}");
    // Stripe completes the refund; payd learns it only from its own refund poll
    // (every 30 s here), so for now it holds it as processing.
    // (payd asks Stripe after the refund request is durable: wait for the refund to
    // exist, not only for every existing one to have succeeded.)
    wait_until("Stripe completes A's refund", || {
        let refunds = sandbox.sb.refunds.lock().unwrap();
        !refunds.is_empty() && refunds.iter().all(|r| r["status"] == "succeeded")
    })
    .await;
    assert_eq!(
        app.stored_order(&a).refunds[0].state,
        RefundState::Processing
    );
    let d = order_no(&app.order(&ud, "usd_pack", "stripe_checkout").await);
    let d_pi = sandbox.pay(&d, None, None);
    sandbox.send_session(&d, "checkout.session.completed").await;
    app.wait_for_status(&ud, &d, "paid", Duration::from_secs(5))
        .await;
    sandbox.sb.balance_hide.lock().unwrap().push(d_pi);
    // B: paid by card; the webhook never came and payd has not asked yet.
    let b = order_no(&app.order(&ub, "usd_pack", "stripe_checkout").await);
    let b_pi = sandbox.pay(&b, None, None);
    assert_eq!(app.stored_order(&b).status, OrderStatus::Pending);

    let today = utc_today();
    let (status, first) = run(&app, "stripe", &today).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let mut want = vec![
        (
            "paid_not_recorded".to_string(),
            b.clone(),
            "repaired".to_string(),
        ),
        ("missing_at_provider".into(), d.clone(), "unresolved".into()),
        ("refund_not_recorded".into(), a.clone(), "repaired".into()),
    ];
    want.sort();
    assert_eq!(discrepancies(&first), want, "{first:#}");
    assert_eq!(total(&first, "matched"), (1, 499));
    // The refund payd still held as processing is recorded as succeeded, as the
    // refund poll would have done.
    assert_eq!(total(&first, "refund_not_recorded"), (1, 99));
    assert_eq!(
        app.stored_order(&a).refunds[0].state,
        RefundState::Succeeded
    );
    assert_eq!(
        first["statement_rows"], 3,
        "A's charge and refund, B's charge"
    );
    assert_eq!(
        first["fees"],
        json!([{"currency": "USD", "fee_milli_minor": 2 * (14 + 30) * 1000}])
    );
    // Three transactions two to a page: payd asked twice, the second after the first page's last id.
    let pages: Vec<String> = sandbox
        .seen()
        .into_iter()
        .filter(|s| s.path.starts_with("/v1/balance_transactions"))
        .map(|s| s.path)
        .collect();
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert!(pages[1].contains("starting_after=txn_"), "{pages:?}");
    // B: paid through the machine's ordinary path, granted once, its PaymentIntent recorded.
    let stored_b = app.stored_order(&b);
    assert_eq!(stored_b.status, OrderStatus::Paid);
    assert!(!stored_b.late_payment && stored_b.granted);
    assert_eq!(
        stored_b.provider_transaction_id.as_deref(),
        Some(b_pi.as_str())
    );
    assert_eq!(app.entitlements(&ub).await["points"], 50);
    assert_ne!(a_pi, b_pi);

    let before = money_state(&app);
    let (status, second) = run(&app, "stripe", &today).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(discrepancies(&second), discrepancies(&first));
    assert_eq!(second["totals"], first["totals"]);
    assert!(
        money_state(&app) == before,
        "a re-run changed orders or entitlements"
    );
    assert_eq!(app.entitlements(&ub).await["points"], 50);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wechat_v2_downloadbill_finds_the_lost_payment_and_a_missing_day_is_refused() {
    let (app, sandbox) = crate::wechat_v2::start("4s").await;
    let (ua, ub, ud) = (app.token("va"), app.token("vb"), app.token("vd"));
    let a = order_no(&app.order(&ua, "basic", "wechat_native").await);
    sandbox.pay(&a, None);
    sandbox.notify(&a).await;
    app.wait_for_status(&ua, &a, "paid", Duration::from_secs(5))
        .await;
    let d = order_no(&app.order(&ud, "coins_100", "wechat_native").await);
    sandbox.pay(&d, None);
    sandbox.notify(&d).await;
    app.wait_for_status(&ud, &d, "paid", Duration::from_secs(5))
        .await;
    sandbox.sb.bill_hide.lock().unwrap().push(d.clone());
    let b = order_no(&app.order(&ub, "basic", "wechat_native").await);
    sandbox.sb.unseen.lock().unwrap().push(b.clone());
    sandbox.pay(&b, None);
    app.wait_for_status(&ub, &b, "expired", Duration::from_secs(15))
        .await;

    let today = beijing_today();
    // `wechat` names whichever WeChat API the merchant is on.
    let (status, first) = run(&app, "wechat", &today).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["provider"], "wechat_v2");
    let mut want = vec![
        (
            "paid_not_recorded".to_string(),
            b.clone(),
            "repaired".to_string(),
        ),
        ("missing_at_provider".into(), d.clone(), "unresolved".into()),
    ];
    want.sort();
    assert_eq!(discrepancies(&first), want, "{first:#}");
    assert_eq!(total(&first, "matched"), (1, 990));
    let stored_b = app.stored_order(&b);
    assert!(stored_b.status == OrderStatus::Paid && stored_b.late_payment && stored_b.granted);
    assert_eq!(
        app.entitlements(&ub).await["membership"]["queries_remaining"],
        100
    );
    let before = money_state(&app);
    let (_, second) = run(&app, "wechat_v2", &today).await;
    assert_eq!(discrepancies(&second), discrepancies(&first));
    assert!(money_state(&app) == before);
    // No bill that day: WeChat's XML FAIL, passed on.
    let (status, body) = run(&app, "wechat_v2", "2001-01-01").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("No Bill Exist (20002)"),
        "{body}"
    );

    // The command line: through the running server, then on its own once payd stops.
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("payd.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\npath = {:?}\n{}",
            app.dir.path().display().to_string(),
            app.config_text()
        ),
    )
    .unwrap();
    let cli = |extra: Vec<String>| {
        let mut args = vec![
            "reconcile".to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        args.extend(extra);
        async move {
            tokio::task::spawn_blocking(move || {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_payd"))
                    .args(&args)
                    .output()
                    .unwrap();
                (
                    out.status.success(),
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ),
                )
            })
            .await
            .unwrap()
        }
    };
    let (ok, out) = cli(vec![
        "--date".into(),
        today.clone(),
        "--url".into(),
        app.base.clone(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("wechat_v2 {today}: completed")) && out.contains("1 unresolved"),
        "{out}"
    );
    let (ok, out) = cli(vec![
        "--date".into(),
        "2001-01-01".into(),
        "--url".into(),
        app.base.clone(),
    ])
    .await;
    assert!(!ok && out.contains("No Bill Exist"), "{out}");
    let dir = app.dir.clone();
    app.stop().await;
    let (ok, out) = cli(vec![
        "--date".into(),
        today.clone(),
        "--provider".into(),
        "wechat_v2".into(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("payd was not running") && out.contains("(1 repaired, 1 unresolved)"),
        "{out}"
    );
    drop(dir);
}

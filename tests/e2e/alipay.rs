//! Alipay end to end: payd against the Alipay sandbox over real HTTP, for both QR
//! (`alipay_qr`) and PC web (`alipay_page`) payments.

use std::collections::BTreeMap;
use std::time::Duration;

use payd::providers::alipay::wire;
use payd::providers::wechat::crypto::{MerchantSigner, RsaVerifier};
use payd_actors::model::{AnomalyKind, ProviderKind};
use payd_actors::tables::NOTIFICATIONS;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::alipay_sandbox::*;
use crate::support::{TestApp, order_no};
use crate::wechat_sandbox::fixture;

pub(crate) fn bare_base64(pem_file: &str) -> String {
    std::fs::read_to_string(fixture(pem_file))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect()
}

/// payd with Alipay pointed at the sandbox. The app key is given inline as the
/// bare base64 Alipay's console hands out; Alipay's public key as a PEM file.
/// The `[alipay]` table that points payd at `sandbox`.
pub(crate) fn payd_config(sandbox: &AlipaySandbox) -> String {
    format!(
        r#"
[alipay]
app_id = "{APP_ID}"
seller_id = "{SELLER_ID}"
private_key = "{key}"
alipay_public_key_path = {pubkey:?}
gateway = "{gateway}"
"#,
        key = bare_base64("vectors/merchant_rsa2048_private_pkcs8.pem"),
        pubkey = fixture("vectors/provider_rsa2048_public.pem")
            .display()
            .to_string(),
        gateway = sandbox.gateway(),
    )
}

async fn start_with(replacements: &[(&str, &str)]) -> (TestApp, AlipaySandbox) {
    let sandbox = AlipaySandbox::start().await;
    let alipay = payd_config(&sandbox);
    let app = TestApp::spawn_real(replacements, &alipay).await;
    (app, sandbox)
}

async fn start() -> (TestApp, AlipaySandbox) {
    start_with(&[("order_expire = \"4s\"", "order_expire = \"60s\"")]).await
}

async fn post_notify(app: &TestApp, body: &str) -> (StatusCode, String) {
    let r = app
        .client
        .post(format!("{}/api/v1/notify/alipay", app.base))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

async fn get_page(app: &TestApp, url: &str) -> (StatusCode, String) {
    let r = app.client.get(url).send().await.unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

fn notify_id(body: &str) -> String {
    wire::form_decode_map(body.as_bytes()).unwrap()["notify_id"].clone()
}

fn logged(app: &TestApp, event_id: &str) -> Option<payd_actors::model::NotificationRecord> {
    let view = app.app().state().store.read().unwrap();
    view.get(
        &NOTIFICATIONS,
        &("alipay".to_string(), event_id.to_string()),
    )
    .unwrap()
}

fn assert_beijing_expiry(order: &Value, time_expire: &str) {
    let expire_at = time::OffsetDateTime::parse(
        order["expire_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let sent = wire::parse_beijing_wall_time(time_expire).expect("yyyy-MM-dd HH:mm:ss");
    assert_eq!(
        sent.ms() / 1000,
        expire_at.unix_timestamp(),
        "{time_expire}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_qr_purchase_is_signed_paid_by_notify_and_granted_once() {
    let (app, sandbox) = start().await;
    let u = app.token("wang");
    let order = app.order(&u, "basic", "alipay_qr").await;
    let no = order_no(&order);
    assert_eq!(order["provider"], "alipay");
    assert_eq!(
        order["qr_code_url"],
        format!("https://qr.alipay.com/bax0{no}")
    );
    // The sandbox saw a correctly signed precreate with the order's terms.
    let seen = sandbox.seen("alipay.trade.precreate");
    let precreate = seen.first().expect("precreate seen");
    assert!(precreate.signature_ok);
    assert_eq!(precreate.http_method, "POST");
    assert_eq!(precreate.params["sign_type"], "RSA2");
    assert_eq!(
        precreate.params["notify_url"],
        format!("{}/api/v1/notify/alipay", app.base)
    );
    let biz = precreate.biz();
    assert_eq!(biz["out_trade_no"], no.as_str());
    assert_eq!(biz["total_amount"], "9.90");
    assert_beijing_expiry(&order, biz["time_expire"].as_str().unwrap());
    assert_beijing_expiry(&order, &sandbox.trade(&no).unwrap().time_expire.unwrap());

    let trade_no = sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, "success");
    let paid = app
        .wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    assert_eq!(paid["provider_transaction_id"], trade_no.as_str());
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    // Alipay delivers the same notification again: `success`, nothing changes, and
    // the log counts a second delivery of one event.
    assert_eq!(sandbox.redeliver(&no).await, "success");
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    let body = sandbox.sb.last_notify.lock().unwrap()[&no].clone();
    let entry = logged(&app, &format!("{}:TRADE_SUCCESS", notify_id(&body))).expect("logged");
    assert_eq!(
        (entry.result.as_str(), entry.deliveries, entry.provider),
        ("processed", 2, ProviderKind::Alipay)
    );
    assert_eq!(entry.raw_body, body.as_bytes());
    // Every delivery got exactly the 7 bytes on the first attempt.
    let deliveries = sandbox.sb.deliveries.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries.iter().all(|d| d.reply == "success"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_page_purchase_redirects_with_a_signed_url_and_the_return_page_shows_the_stored_status()
 {
    let (app, sandbox) = start().await;
    let u = app.token("li");
    let order = app.order(&u, "coins_100", "alipay_page").await;
    let no = order_no(&order);
    assert_eq!(order["provider"], "alipay");
    assert!(order["qr_code_url"].is_null());
    let url = order["payment_url"]
        .as_str()
        .expect("payment_url")
        .to_string();
    // The redirect URL is the gateway with every parameter, signed with the app key.
    let (gateway, query) = url.split_once('?').unwrap();
    assert_eq!(gateway, sandbox.gateway());
    let params = wire::form_decode_map(query.as_bytes()).unwrap();
    let merchant = RsaVerifier::from_public_key_pem(
        &std::fs::read(fixture("vectors/merchant_rsa2048_public.pem")).unwrap(),
    )
    .unwrap();
    let pairs: Vec<_> = params.iter().collect();
    assert!(merchant.verify_base64(
        wire::request_sign_content(&pairs).as_bytes(),
        &params["sign"]
    ));
    assert_eq!(params["method"], "alipay.trade.page.pay");
    assert_eq!(params["return_url"], format!("{}/payment/return", app.base));
    let biz: Value = serde_json::from_str(&params["biz_content"]).unwrap();
    assert_eq!(biz["product_code"], "FAST_INSTANT_TRADE_PAY");
    assert_eq!(biz["total_amount"], "9.90");
    assert_beijing_expiry(&order, biz["time_expire"].as_str().unwrap());

    // The buyer's browser follows it: the sandbox checks the signature and shows its cashier.
    let (status, page) = get_page(&app, &url).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let seen = sandbox.seen("alipay.trade.page.pay");
    assert!(seen[0].signature_ok && seen[0].http_method == "GET");

    // The buyer pays and comes back before the notify arrives: a genuine return,
    // but the page shows what payd knows — still pending.
    sandbox.pay(&no, None);
    let back = sandbox.return_url(&no);
    assert!(back.starts_with(&format!("{}/payment/return?", app.base)));
    let (status, page) = get_page(&app, &back).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("data-status=\"pending\""), "{page}");
    assert!(page.contains(&no));

    assert_eq!(sandbox.notify(&no).await, "success");
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    assert_eq!(app.entitlements(&u).await["points"], 110);
    let (status, page) = get_page(&app, &back).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("data-status=\"paid\""), "{page}");

    // Forged and unsigned returns: refused, nothing changes.
    let before = app.fingerprint();
    let forged = back.replacen("total_amount=9.90", "total_amount=0.01", 1);
    assert_ne!(forged, back);
    let unsigned = back.split("&sign=").next().unwrap().to_string();
    let bare = format!("{}/payment/return", app.base);
    // An Alipay order is never shown on an unsigned, Stripe-style return.
    let by_number = format!("{}/payment/return?order_no={no}", app.base);
    for url in [forged, unsigned, bare, by_number] {
        let (status, page) = get_page(&app, &url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        assert!(page.contains("could not be verified"), "{page}");
        assert!(!page.contains("data-status"));
    }
    assert_eq!(app.fingerprint(), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_alipay_notify_is_found_by_polling() {
    let (app, sandbox) = start().await;
    let u = app.token("zhao");
    let qr = order_no(&app.order(&u, "coins_100", "alipay").await);
    let page = app.order(&u, "coins_100", "alipay_page").await;
    let page_no = order_no(&page);
    get_page(&app, page["payment_url"].as_str().unwrap()).await;
    sandbox.pay(&qr, None);
    sandbox.pay(&page_no, None);
    for no in [&qr, &page_no] {
        let paid = app
            .wait_for_status(&u, no, "paid", Duration::from_secs(5))
            .await;
        assert_eq!(
            paid["provider_transaction_id"],
            sandbox.trade(no).unwrap().trade_no.as_str()
        );
    }
    assert_eq!(app.entitlements(&u).await["points"], 220);
    let queries = sandbox.seen("alipay.trade.query");
    assert!(queries.iter().all(|s| s.signature_ok));
    assert!(
        queries
            .iter()
            .any(|s| s.biz()["out_trade_no"] == qr.as_str())
    );
    assert!(sandbox.sb.deliveries.lock().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_alipay_orders_are_closed_at_the_sandbox_and_a_payment_racing_the_close_is_not_lost()
 {
    let (app, sandbox) = start_with(&[("order_expire = \"4s\"", "order_expire = \"3s\"")]).await;
    let u = app.token("zhang");
    // Scanned but never paid: the trade exists and is closed.
    let scanned = order_no(&app.order(&u, "basic", "alipay_qr").await);
    sandbox.scan(&scanned);
    // Never scanned: Alipay has no trade; the close answers TRADE_NOT_EXIST.
    let unscanned = order_no(&app.order(&u, "basic", "alipay_qr").await);
    // Page pay opened by the browser, never paid.
    let page = app.order(&u, "basic", "alipay_page").await;
    get_page(&app, page["payment_url"].as_str().unwrap()).await;
    let page_no = order_no(&page);
    // Paid at the very moment of the close: ACQ.TRADE_STATUS_ERROR, then paid.
    let racing = order_no(&app.order(&u, "coins_100", "alipay_qr").await);
    sandbox.sb.pay_on_close.lock().unwrap().push(racing.clone());

    for no in [&scanned, &unscanned, &page_no] {
        app.wait_for_status(&u, no, "expired", Duration::from_secs(10))
            .await;
    }
    assert_eq!(sandbox.trade(&scanned).unwrap().status, "TRADE_CLOSED");
    assert_eq!(sandbox.trade(&page_no).unwrap().status, "TRADE_CLOSED");
    let unscanned_trade = sandbox.trade(&unscanned).unwrap();
    assert!(!unscanned_trade.scanned);
    assert_eq!(unscanned_trade.status, "WAIT_BUYER_PAY");
    assert!(
        sandbox
            .seen("alipay.trade.close")
            .iter()
            .any(|s| s.signature_ok && s.biz()["out_trade_no"] == unscanned.as_str())
    );
    let paid = app
        .wait_for_status(&u, &racing, "paid", Duration::from_secs(10))
        .await;
    assert_eq!(paid["late_payment"], false);
    assert_eq!(app.entitlements(&u).await["points"], 110);
    assert_eq!(app.entitlements(&u).await["membership"], json!(null));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_partial_refunds_go_through_alipay_idempotently() {
    use payd_actors::provider::{PaymentProvider, RefundRequest, RefundStatus, TradeRef};
    let (app, sandbox) = start().await;
    let u = app.token("chen");
    let no = order_no(&app.order(&u, "premium", "alipay_qr").await);
    let trade_no = sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, "success");
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    let alipay = app.app().state().alipay.clone().expect("alipay configured");
    let trade = TradeRef {
        order_no: no.clone(),
        trade_ref: None,
        amount_minor: 2990,
        currency: payd_actors::model::Currency::parse("CNY").unwrap(),
    };
    let request = |refund_no: &str, amount| RefundRequest {
        trade: trade.clone(),
        refund_no: refund_no.into(),
        amount_minor: amount,
        reason: "test".into(),
        transaction_id: None,
    };
    let partial = alipay.refund(request("RF1", 1000)).await.unwrap();
    assert_eq!(partial.status, RefundStatus::Succeeded, "fund_change=Y");
    assert_eq!(
        partial.provider_refund_id.as_deref(),
        Some(trade_no.as_str())
    );
    // Retried with the same out_request_no: the same refund, no money moves twice.
    let again = alipay.refund(request("RF1", 1000)).await.unwrap();
    assert_eq!(again.status, RefundStatus::Processing, "fund_change=N");
    assert_eq!(
        alipay
            .query_refund(request("RF1", 1000))
            .await
            .unwrap()
            .status,
        RefundStatus::Succeeded
    );
    assert_eq!(sandbox.trade(&no).unwrap().refunds.len(), 1);
    let reused = alipay.refund(request("RF1", 999)).await.unwrap_err();
    assert!(
        reused.message.contains("ACQ.DISCORDANT_REPEAT_REQUEST"),
        "{reused}"
    );
    // More than is left is refused; the rest closes the trade; nothing is left after.
    let too_much = alipay.refund(request("RF2", 1991)).await.unwrap_err();
    assert!(
        too_much.message.contains("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"),
        "{too_much}"
    );
    let rest = alipay.refund(request("RF2", 1990)).await.unwrap();
    assert_eq!(rest.status, RefundStatus::Succeeded);
    assert_eq!(sandbox.trade(&no).unwrap().status, "TRADE_CLOSED");
    let after = alipay.refund(request("RF3", 1)).await.unwrap_err();
    assert!(after.message.contains("ACQ.TRADE_STATUS_ERROR"), "{after}");
    // A refund Alipay never received: an empty answer, nothing moved.
    assert_eq!(
        alipay
            .query_refund(request("RF9", 100))
            .await
            .unwrap()
            .status,
        RefundStatus::Failed {
            reason: "not_refunded".into()
        }
    );
    // The sandbox notified both refunds (TRADE_SUCCESS and TRADE_CLOSED with
    // refund_fee): verified, logged and acknowledged; the order is untouched.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let refund_acks: Vec<String> = sandbox
            .sb
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.order_no == no && d.refund && d.reply == "success")
            .map(|d| d.trade_status.clone())
            .collect();
        if refund_acks.len() >= 2 {
            assert!(refund_acks.contains(&"TRADE_SUCCESS".to_string()));
            assert!(refund_acks.contains(&"TRADE_CLOSED".to_string()));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refund notifies never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, order) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(order["status"], "paid");
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        500
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_late_and_out_of_order_alipay_notifies_change_nothing() {
    let (app, sandbox) = start().await;
    let u = app.token("sun");
    let no = order_no(&app.order(&u, "coins_100", "alipay_qr").await);
    sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, "success");
    let success_body = sandbox.sb.last_notify.lock().unwrap()[&no].clone();
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    // The refund window passes: TRADE_FINISHED after TRADE_SUCCESS.
    sandbox.finish(&no);
    assert_eq!(sandbox.notify(&no).await, "success");
    let finished_body = sandbox.sb.last_notify.lock().unwrap()[&no].clone();
    // A second, fresh TRADE_SUCCESS notification (new notify_id) and a late copy of
    // the first one.
    sandbox
        .sb
        .trades
        .lock()
        .unwrap()
        .get_mut(&no)
        .unwrap()
        .status = "TRADE_SUCCESS".into();
    assert_eq!(sandbox.notify(&no).await, "success");
    assert_eq!(post_notify(&app, &success_body).await.1, "success");
    assert_eq!(post_notify(&app, &finished_body).await.1, "success");
    assert_eq!(app.entitlements(&u).await["points"], 110);
    let order = app.stored_order(&no);
    assert_eq!(
        order.payments.len(),
        1,
        "one payment, however often confirmed"
    );
    let finished = logged(
        &app,
        &format!("{}:TRADE_FINISHED", notify_id(&finished_body)),
    )
    .unwrap();
    assert_eq!(
        (finished.result.as_str(), finished.deliveries),
        ("duplicate", 2)
    );

    // TRADE_CLOSED without refund_fee for a pending order: acknowledged and logged;
    // polling and expiry decide, not the notify.
    let pending = order_no(&app.order(&u, "coins_100", "alipay_qr").await);
    sandbox.scan(&pending);
    sandbox
        .sb
        .trades
        .lock()
        .unwrap()
        .get_mut(&pending)
        .unwrap()
        .status = "TRADE_CLOSED".into();
    let mut params = sandbox.notify_params(&pending);
    params.remove("gmt_payment");
    let closed_body = sandbox.signed_form(params);
    assert_eq!(
        post_notify(&app, &closed_body).await,
        (StatusCode::OK, "success".to_string())
    );
    let entry = logged(&app, &format!("{}:TRADE_CLOSED", notify_id(&closed_body))).unwrap();
    assert_eq!(
        (entry.order_no.as_str(), entry.deliveries),
        (pending.as_str(), 1)
    );
    assert_eq!(app.stored_order(&pending).status.as_str(), "pending");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alipay_amount_one_fen_off_is_acknowledged_as_an_anomaly_and_grants_nothing() {
    let (app, sandbox) = start().await;
    let u = app.token("zhou");
    for delta in [-1i64, 1] {
        let no = order_no(&app.order(&u, "basic", "alipay_qr").await);
        sandbox.pay(&no, Some(990 + delta));
        let params = sandbox.notify_params(&no);
        assert_eq!(
            params["total_amount"],
            if delta < 0 { "9.89" } else { "9.91" }
        );
        assert_eq!(
            sandbox.notify(&no).await,
            "success",
            "acknowledged so Alipay stops retrying"
        );
        let order = app
            .wait_for_status(&u, &no, "failed", Duration::from_secs(5))
            .await;
        assert_eq!(order["failure_reason"], "amount_mismatch");
        assert_eq!(
            app.stored_order(&no).anomalies[0].kind,
            AnomalyKind::AmountMismatch
        );
    }
    assert_eq!(app.entitlements(&u).await["membership"], json!(null));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_unknown_and_malformed_alipay_notifies_are_rejected_counted_and_change_nothing()
 {
    // No polling during the test, so storage changes only if a notify changes it.
    let (app, sandbox) = start_with(&[
        ("order_expire = \"4s\"", "order_expire = \"60s\""),
        ("query_interval = \"1s\"", "query_interval = \"60s\""),
    ])
    .await;
    let u = app.token("wu");
    let no = order_no(&app.order(&u, "basic", "alipay_qr").await);
    sandbox.pay(&no, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = app.fingerprint();
    let good = sandbox.notify_params(&no);
    let good_body = sandbox.signed_form(good.clone());

    let bent = |f: &dyn Fn(&mut BTreeMap<String, String>)| {
        let mut p = good.clone();
        f(&mut p);
        sandbox.signed_form(p)
    };
    // Changed after signing: the signature no longer covers it.
    let mut tampered = wire::form_decode_map(good_body.as_bytes()).unwrap();
    tampered.insert("total_amount".into(), "0.01".into());
    let tampered: Vec<_> = tampered.iter().collect();
    let tampered = wire::form_encode(&tampered);
    // Signed with the merchant's own key instead of Alipay's.
    let mut own_key = good.clone();
    let merchant = MerchantSigner::from_pem(
        &std::fs::read(fixture("vectors/merchant_rsa2048_private_pkcs8.pem")).unwrap(),
    )
    .unwrap();
    own_key.insert(
        "sign".into(),
        merchant.sign_base64(wire::notify_verify_content(&good).as_bytes()),
    );
    own_key.insert("sign_type".into(), "RSA2".into());
    let own_key: Vec<_> = own_key.iter().collect();
    let own_key = wire::form_encode(&own_key);
    let unsigned: Vec<_> = good.iter().collect();
    let unsigned = wire::form_encode(&unsigned);
    let wrong_app = bent(&|p| {
        p.insert("app_id".into(), "2021000000009999".into());
    });
    let wrong_seller = bent(&|p| {
        p.insert("seller_id".into(), "2088000000009999".into());
    });
    let no_seller = bent(&|p| {
        p.remove("seller_id");
    });
    let unknown = bent(&|p| {
        p.insert(
            "out_trade_no".into(),
            "PD261122203315K3M9Q2XA7F4HD1RN".into(),
        );
    });
    let no_notify_id = bent(&|p| {
        p.remove("notify_id");
    });
    let bad_amount = bent(&|p| {
        p.insert("total_amount".into(), "1e3".into());
    });
    let huge = format!("pad={}", "a".repeat(70 * 1024));

    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "tampered after signing",
            tampered,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            "signed with the wrong key",
            own_key,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            "unsigned",
            unsigned,
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
        (
            "wrong app_id",
            wrong_app,
            StatusCode::BAD_REQUEST,
            "wrong_merchant",
        ),
        (
            "wrong seller_id",
            wrong_seller,
            StatusCode::BAD_REQUEST,
            "wrong_merchant",
        ),
        (
            "no seller_id",
            no_seller,
            StatusCode::BAD_REQUEST,
            "wrong_merchant",
        ),
        (
            "unknown order",
            unknown,
            StatusCode::BAD_REQUEST,
            "unknown_order",
        ),
        (
            "bad percent-encoding",
            "a=%zz&sign=x".into(),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "a parameter twice",
            format!("{good_body}&app_id={APP_ID}"),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "no notify_id",
            no_notify_id,
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "amount not in yuan",
            bad_amount,
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "oversized body",
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    let log = app.app().state().rejections.clone();
    for (name, body, status, reason) in cases {
        let counted = log.count("alipay", reason);
        let (got, reply) = post_notify(&app, &body).await;
        assert_eq!((got, reply.as_str()), (status, "fail"), "{name}");
        assert_eq!(
            log.count("alipay", reason),
            counted + 1,
            "{name} counted as {reason}"
        );
    }
    assert_eq!(
        app.fingerprint(),
        before,
        "a rejected notify changed storage"
    );
    let (_, order) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(order["status"], "pending");
    // The genuine one still works afterwards.
    assert_eq!(
        post_notify(&app, &good_body).await,
        (StatusCode::OK, "success".to_string())
    );
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(3))
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_alipay_configured_mock_mode_still_serves_new_orders() {
    let sandbox = AlipaySandbox::start().await;
    let app = TestApp::spawn_with(&format!(
        r#"
[alipay]
app_id = "{APP_ID}"
private_key_path = {key:?}
alipay_public_key = "{pubkey}"
gateway = "{gateway}"
"#,
        key = fixture("vectors/merchant_rsa2048_private_pkcs1.pem")
            .display()
            .to_string(),
        pubkey = bare_base64("vectors/provider_rsa2048_public.pem"),
        gateway = sandbox.gateway(),
    ))
    .await;
    assert!(
        app.app().state().alipay.is_some(),
        "keys load from PKCS#1 PEM and bare base64"
    );
    let u = app.token("qian");
    for method in ["alipay_qr", "alipay_page"] {
        let order = app.order(&u, "coins_100", method).await;
        assert_eq!(order["provider"], "mock", "{method}");
    }
    assert!(sandbox.sb.seen.lock().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_refuses_requests_not_signed_by_the_app_key_or_not_in_beijing_time() {
    let sandbox = AlipaySandbox::start().await;
    let merchant = MerchantSigner::from_pem(
        &std::fs::read(fixture("vectors/merchant_rsa2048_private_pkcs8.pem")).unwrap(),
    )
    .unwrap();
    let provider = RsaVerifier::from_public_key_pem(
        &std::fs::read(fixture("vectors/provider_rsa2048_public.pem")).unwrap(),
    )
    .unwrap();
    let now = payd_actors::model::Timestamp(crate::support::now_secs() as i64 * 1000);
    let request = |timestamp: String, tamper: bool| {
        let mut params = vec![
            ("app_id", APP_ID.to_string()),
            ("method", "alipay.trade.query".to_string()),
            ("format", "JSON".to_string()),
            ("charset", "utf-8".to_string()),
            ("sign_type", "RSA2".to_string()),
            ("timestamp", timestamp),
            ("version", "1.0".to_string()),
            ("biz_content", "{\"out_trade_no\":\"NONE\"}".to_string()),
        ];
        let sign = merchant.sign_base64(wire::request_sign_content(&params).as_bytes());
        params.push(("sign", sign));
        if tamper {
            params[7].1 = "{\"out_trade_no\":\"OTHER\"}".to_string();
        }
        wire::form_encode(&params)
    };
    let cases = [
        (
            request(wire::beijing_wall_time(now), false),
            "ACQ.TRADE_NOT_EXIST",
        ),
        (
            request(wire::beijing_wall_time(now), true),
            "isv.invalid-signature",
        ),
        // UTC wall time is eight hours off Beijing's.
        (
            request(
                wire::beijing_wall_time(now.plus_ms(-8 * 3600 * 1000)),
                false,
            ),
            "isv.invalid-timestamp",
        ),
    ];
    for (body, sub_code) in cases {
        let text = reqwest::Client::new()
            .post(sandbox.gateway())
            .header(
                "content-type",
                "application/x-www-form-urlencoded;charset=utf-8",
            )
            .body(body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // Every answer is signed over its exact member text with Alipay's key.
        let member = wire::top_level_value(&text, "alipay_trade_query_response")
            .unwrap()
            .expect("response member");
        let sign: String =
            serde_json::from_str(wire::top_level_value(&text, "sign").unwrap().unwrap()).unwrap();
        assert!(provider.verify_base64(member.as_bytes(), &sign), "{text}");
        let v: Value = serde_json::from_str(member).unwrap();
        assert_eq!(v["sub_code"], sub_code, "{text}");
    }
}

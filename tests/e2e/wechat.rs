//! WeChat Pay v3 end to end: payd against the WeChat sandbox over real HTTP.

use std::time::Duration;

use payd_actors::model::{AnomalyKind, ProviderKind};
use payd_actors::tables::NOTIFICATIONS;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, order_no};
use crate::wechat_sandbox::*;

async fn start() -> (TestApp, WechatSandbox) {
    start_with("60s").await
}

async fn start_with(order_expire: &str) -> (TestApp, WechatSandbox) {
    let sandbox = WechatSandbox::start().await;
    let wechat = payd_config(&sandbox);
    let app = TestApp::spawn_real(
        &[(
            "order_expire = \"4s\"",
            &format!("order_expire = \"{order_expire}\""),
        )],
        &wechat,
    )
    .await;
    (app, sandbox)
}

async fn post_raw(
    app: &TestApp,
    path: &str,
    body: &str,
    headers: &[(String, String)],
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}{}", app.base, path))
        .body(body.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_native_purchase_is_signed_paid_by_callback_and_granted_once() {
    let (app, sandbox) = start().await;
    let u = app.token("wang");
    let order = app.order(&u, "basic", "wechat_native").await;
    let no = order_no(&order);
    assert_eq!(order["provider"], "wechat_v3");
    assert_eq!(
        order["qr_code_url"],
        format!("weixin://wxpay/bizpayurl?pr={no}")
    );
    // The sandbox saw a correctly signed prepay carrying the order's expiry in Beijing time.
    let seen = sandbox.sb.seen.lock().unwrap().clone();
    let prepay = seen
        .iter()
        .find(|s| s.path == "/v3/pay/transactions/native")
        .expect("prepay seen");
    assert!(prepay.signature_ok);
    assert_eq!(prepay.method, "POST");
    let body: Value = serde_json::from_str(&prepay.body).unwrap();
    assert_eq!(body["amount"], json!({"total": 990, "currency": "CNY"}));
    assert_eq!(
        body["notify_url"],
        format!("{}/api/v1/notify/wechat", app.base)
    );
    let time_expire = sandbox.trade(&no).unwrap().time_expire.unwrap();
    assert!(time_expire.ends_with("+08:00"), "{time_expire}");
    let expire_at = time::OffsetDateTime::parse(
        order["expire_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let sent =
        time::OffsetDateTime::parse(&time_expire, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert_eq!(sent.unix_timestamp(), expire_at.unix_timestamp());

    sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, 204);
    let paid = app
        .wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    assert!(
        paid["provider_transaction_id"]
            .as_str()
            .unwrap()
            .starts_with("42000")
    );
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    // WeChat delivers it again: success reply, nothing changes, logged as a second delivery.
    assert_eq!(sandbox.notify(&no).await, 204);
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    let view = app.app().state().store.read().unwrap();
    let logged = view
        .get(
            &NOTIFICATIONS,
            &("wechat_v3".to_string(), format!("EV-{no}")),
        )
        .unwrap()
        .expect("logged");
    assert_eq!(
        (logged.result.as_str(), logged.deliveries, logged.provider),
        ("processed", 2, ProviderKind::WechatV3)
    );
    assert!(
        logged
            .headers
            .iter()
            .any(|(k, _)| k == "wechatpay-signature")
    );
    drop(view);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_found_by_polling() {
    let (app, sandbox) = start().await;
    let u = app.token("li");
    let no = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&no, None);
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(4))
        .await;
    assert_eq!(app.entitlements(&u).await["points"], 110);
    assert!(sandbox.sb.seen.lock().unwrap().iter().any(|s| {
        s.path
            .starts_with(&format!("/v3/pay/transactions/out-trade-no/{no}?mchid="))
            && s.signature_ok
    }));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_order_is_closed_at_wechat_and_a_payment_racing_the_close_is_not_lost() {
    let (app, sandbox) = start_with("3s").await;
    let u = app.token("zhang");
    let idle = order_no(&app.order(&u, "basic", "wechat").await);
    let racing = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.sb.pay_on_close.lock().unwrap().push(racing.clone());
    app.wait_for_status(&u, &idle, "expired", Duration::from_secs(10))
        .await;
    assert_eq!(sandbox.trade(&idle).unwrap().state, "CLOSED");
    let paid = app
        .wait_for_status(&u, &racing, "paid", Duration::from_secs(10))
        .await;
    assert_eq!(
        paid["late_payment"], false,
        "paid before the expiry sequence ended"
    );
    assert_eq!(app.entitlements(&u).await["points"], 110);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_partial_refunds_go_through_wechat_with_their_notifications() {
    use payd_actors::provider::{RefundRequest, RefundStatus, TradeRef};
    let (app, sandbox) = start().await;
    let u = app.token("chen");
    let no = order_no(&app.order(&u, "premium", "wechat").await);
    sandbox.pay(&no, None);
    sandbox.notify(&no).await;
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    let wechat = app.app().state().wechat.clone().expect("wechat configured");
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
    use payd_actors::provider::PaymentProvider;
    let partial = wechat.refund(request("RF1", 1000)).await.unwrap();
    assert_eq!(partial.status, RefundStatus::Processing);
    assert!(partial.provider_refund_id.is_some());
    // Retried with the same out_refund_no: the same refund, not a second one.
    let again = wechat.refund(request("RF1", 1000)).await.unwrap();
    assert_eq!(again.provider_refund_id, partial.provider_refund_id);
    let rest = wechat.refund(request("RF2", 1990)).await.unwrap();
    assert_eq!(rest.status, RefundStatus::Processing);
    let too_much = wechat.refund(request("RF3", 1)).await.unwrap_err();
    assert!(too_much.message.contains("INVALID_REQUEST"), "{too_much}");
    // The sandbox completes them and notifies; payd verifies, logs and acknowledges.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let done = wechat.query_refund(request("RF2", 1990)).await.unwrap();
        let delivered = sandbox
            .sb
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, s)| n == &no && *s == 204)
            .count();
        if done.status == RefundStatus::Succeeded && delivered >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refunds never completed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let view = app.app().state().store.read().unwrap();
    assert!(
        view.get(
            &NOTIFICATIONS,
            &("wechat_v3".to_string(), "EV-R-RF1".to_string())
        )
        .unwrap()
        .is_some()
    );
    drop(view);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_mid_run_and_both_key_modes_verify_in_one_run() {
    let (app, sandbox) = start().await;
    let u = app.token("zhao");
    // Signed with the WeChat Pay public key.
    let a = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&a, None);
    assert_eq!(sandbox.notify(&a).await, 204);
    // Signed with the platform certificate payd has never seen: one download, accepted.
    sandbox.sign_with(SignWith::Certificate(CERT_SERIAL));
    let b = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&b, None);
    assert_eq!(sandbox.notify(&b).await, 204);
    assert_eq!(*sandbox.sb.certificate_downloads.lock().unwrap(), 1);
    // WeChat rotates to a new certificate: accepted after one refresh… but refreshes are
    // rate-limited, so the rotated serial waits for the next allowed download.
    sandbox.rotate_certificate();
    let c = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&c, None);
    let keys = app.app().state().wechat.clone().unwrap().keys.clone();
    keys.reset_refresh_limit().await;
    assert_eq!(sandbox.notify(&c).await, 204);
    assert_eq!(*sandbox.sb.certificate_downloads.lock().unwrap(), 2);
    for no in [&a, &b, &c] {
        app.wait_for_status(&u, no, "paid", Duration::from_secs(5))
            .await;
    }
    assert_eq!(app.entitlements(&u).await["points"], 330);
    // The downloaded certificates were cached on disk.
    assert!(
        keys.certificate_serials()
            .contains(&ROTATED_SERIAL.to_string())
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amount_one_fen_off_is_acknowledged_as_an_anomaly_and_grants_nothing() {
    let (app, sandbox) = start().await;
    let u = app.token("sun");
    for delta in [-1i64, 1] {
        let no = order_no(&app.order(&u, "basic", "wechat").await);
        sandbox.pay(&no, Some(990 + delta));
        assert_eq!(
            sandbox.notify(&no).await,
            204,
            "acknowledged so WeChat stops retrying"
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
async fn forged_stale_tampered_and_foreign_callbacks_are_rejected_counted_and_change_nothing() {
    let (app, sandbox) = start().await;
    let u = app.token("zhou");
    let no = order_no(&app.order(&u, "basic", "wechat").await);
    sandbox.pay(&no, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = app.fingerprint();
    let tx = sandbox.transaction_json(&no);
    let (good_body, good_headers) = sandbox.notification_for("EV-good", &tx);
    let with = |headers: &[(String, String)], name: &str, value: String| -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case(name) {
                    (k.clone(), value.clone())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    };
    let mut forged_sig = good_headers.clone();
    for (k, v) in forged_sig.iter_mut() {
        if k == "Wechatpay-Signature" {
            let mut bytes = v.clone().into_bytes();
            bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
            *v = String::from_utf8(bytes).unwrap();
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let stale_past = sandbox.sign_headers(good_body.as_bytes(), Some(now - 301));
    // Ten seconds past the limit ahead: `now` is read before the cases run, and a
    // busy machine can take a second or more to reach this one (a later arrival only
    // makes the 301 s old case older, so that side keeps the tight margin).
    let stale_future = sandbox.sign_headers(good_body.as_bytes(), Some(now + 310));
    let unknown_serial = with(
        &good_headers,
        "Wechatpay-Serial",
        "0123456789ABCDEF0123456789ABCDEF01234567".into(),
    );
    let mut tampered: Value = serde_json::from_str(&good_body).unwrap();
    let ct = tampered["resource"]["ciphertext"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ct_bytes = ct.into_bytes();
    ct_bytes[5] = if ct_bytes[5] == b'A' { b'B' } else { b'A' };
    tampered["resource"]["ciphertext"] = json!(String::from_utf8(ct_bytes).unwrap());
    let tampered_body = tampered.to_string();
    let tampered_headers = sandbox.sign_headers(tampered_body.as_bytes(), None);
    let mut foreign_tx = tx.clone();
    foreign_tx["mchid"] = json!("1900000999");
    let (foreign_mch_body, foreign_mch_headers) = sandbox.notification_for("EV-mch", &foreign_tx);
    let mut foreign_app = tx.clone();
    foreign_app["appid"] = json!("wx9999999999999999");
    let (foreign_app_body, foreign_app_headers) = sandbox.notification_for("EV-app", &foreign_app);
    let mut unknown_tx = tx.clone();
    unknown_tx["out_trade_no"] = json!("PD261122203315K3M9Q2XA7F4HD1RN");
    let (unknown_body, unknown_headers) = sandbox.notification_for("EV-unknown", &unknown_tx);
    let malformed = "{\"id\": \"EV-x\", \"resource\": ";
    let malformed_headers = sandbox.sign_headers(malformed.as_bytes(), None);
    let huge = format!("{{\"pad\":\"{}\"}}", "a".repeat(70 * 1024));
    let huge_headers = sandbox.sign_headers(huge.as_bytes(), None);

    type Headers = Vec<(String, String)>;
    let cases: Vec<(&str, &str, Headers, StatusCode, &str)> = vec![
        (
            "forged signature",
            &good_body,
            forged_sig,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            "no signature headers",
            &good_body,
            vec![],
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
        (
            "unknown serial",
            &good_body,
            unknown_serial,
            StatusCode::UNAUTHORIZED,
            "unknown_serial",
        ),
        (
            "timestamp 301 s old",
            &good_body,
            stale_past,
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
        ),
        (
            "timestamp 301 s ahead",
            &good_body,
            stale_future,
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
        ),
        (
            "tampered ciphertext",
            &tampered_body,
            tampered_headers,
            StatusCode::UNAUTHORIZED,
            "undecryptable",
        ),
        (
            "wrong mchid",
            &foreign_mch_body,
            foreign_mch_headers,
            StatusCode::BAD_REQUEST,
            "wrong_merchant",
        ),
        (
            "wrong appid",
            &foreign_app_body,
            foreign_app_headers,
            StatusCode::BAD_REQUEST,
            "wrong_merchant",
        ),
        (
            "unknown order",
            &unknown_body,
            unknown_headers,
            StatusCode::BAD_REQUEST,
            "unknown_order",
        ),
        (
            "malformed JSON",
            malformed,
            malformed_headers,
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "oversized body",
            &huge,
            huge_headers,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    let log = app.app().state().rejections.clone();
    for (name, body, headers, status, reason) in cases {
        let counted = log.count("wechat", reason);
        let (got, reply) = post_raw(&app, "/api/v1/notify/wechat", body, &headers).await;
        assert_eq!(got, status, "{name}: {reply}");
        assert_eq!(reply["code"], "FAIL", "{name}");
        assert_eq!(
            log.count("wechat", reason),
            counted + 1,
            "{name} counted as {reason}"
        );
    }
    assert_eq!(
        app.fingerprint(),
        before,
        "a rejected callback changed storage"
    );
    let (_, order) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(order["status"], "pending");
    // The genuine one still works afterwards.
    let (status, _) = post_raw(&app, "/api/v1/notify/wechat", &good_body, &good_headers).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(3))
        .await;
    app.stop().await;
}

#[test]
fn check_config_names_what_is_missing_or_malformed_without_printing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("bad.pem");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let text = format!(
        r#"
[auth]
jwt_secret = "test-secret-0123456789abcdef"
[wechat]
mch_id = "{MCHID}"
api_v3_key = "{APIV3_KEY}"
private_key_path = {bad:?}
"#,
        bad = bad_key.display().to_string()
    );
    let cfg = payd::config::load_from_str(&text, &|_| None, &[]).unwrap();
    let (report, ok) = payd::check::report(&cfg);
    assert!(!ok, "{report}");
    assert!(report.contains("wechat: UNUSABLE"), "{report}");
    assert!(report.contains("wechat.app_id: missing"), "{report}");
    assert!(
        report.contains("wechat.cert_serial_no: missing"),
        "{report}"
    );
    assert!(report.contains("wechat.private_key_path:"), "{report}");
    assert!(!report.contains(APIV3_KEY), "a secret leaked: {report}");

    let good = format!(
        r#"
[auth]
jwt_secret = "test-secret-0123456789abcdef"
[wechat]
app_id = "{APPID}"
mch_id = "{MCHID}"
api_v3_key = "{APIV3_KEY}"
private_key_path = {key:?}
cert_serial_no = "{MERCHANT_SERIAL}"
platform_public_key_path = {pubkey:?}
platform_public_key_id = "{PUB_KEY_ID}"
"#,
        key = fixture("vectors/merchant_rsa2048_private_pkcs1.pem")
            .display()
            .to_string(),
        pubkey = fixture("vectors/provider_rsa2048_public.pem")
            .display()
            .to_string(),
    );
    let cfg = payd::config::load_from_str(&good, &|_| None, &[]).unwrap();
    let (report, ok) = payd::check::report(&cfg);
    assert!(ok, "{report}");
    assert!(report.contains("wechat: usable"), "{report}");
    assert!(report.contains(PUB_KEY_ID), "{report}");
    assert!(!report.contains(APIV3_KEY));
}

#[test]
fn check_config_reports_alipay_and_stripe_too() {
    let text = r#"
[auth]
jwt_secret = "test-secret-0123456789abcdef"
[alipay]
app_id = "2021000000000001"
[stripe]
secret_key = "sk_test_123"
"#;
    let cfg = payd::config::load_from_str(text, &|_| None, &[]).unwrap();
    let (report, ok) = payd::check::report(&cfg);
    assert!(!ok, "{report}");
    assert!(report.contains("wechat: not configured"), "{report}");
    assert!(report.contains("alipay: UNUSABLE"), "{report}");
    assert!(report.contains("stripe: UNUSABLE"), "{report}");
    assert!(!report.contains("sk_test_123"), "a secret leaked: {report}");
}

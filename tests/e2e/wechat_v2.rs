//! WeChat Pay API v2 (legacy XML) end to end against the v2 sandbox.

use std::time::Duration;

use payd::providers::wechat::crypto::{self, V2SignType};
use payd::providers::wechat::xml::to_xml;
use payd_actors::model::AnomalyKind;
use payd_actors::provider::{PaymentProvider, RefundRequest, RefundStatus, TradeRef};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{TestApp, order_no};
use crate::wechat_sandbox::{APPID, MCHID, fixture};
use crate::wechat_v2_sandbox::{V2_API_KEY, WechatV2Sandbox};

pub(crate) async fn start(order_expire: &str) -> (TestApp, WechatV2Sandbox) {
    let sandbox = WechatV2Sandbox::start().await;
    let wechat = format!(
        r#"
[wechat]
api_version = "v2"
app_id = "{APPID}"
mch_id = "{MCHID}"
api_key = "{V2_API_KEY}"
cert_path = {cert:?}
private_key_path = {key:?}
base_url = "{base}"
"#,
        cert = fixture("wechat/merchant_apiclient_cert.pem")
            .display()
            .to_string(),
        key = fixture("vectors/merchant_rsa2048_private_pkcs8.pem")
            .display()
            .to_string(),
        base = sandbox.base,
    );
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

async fn post_xml(app: &TestApp, path: &str, body: String) -> (StatusCode, String) {
    let r = app
        .client
        .post(format!("{}{}", app.base, path))
        .header("content-type", "text/xml")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_v2_purchase_is_signed_paid_by_xml_notify_and_granted_once() {
    let (app, sandbox) = start("60s").await;
    let u = app.token("v2-wang");
    let order = app.order(&u, "basic", "wechat").await;
    let no = order_no(&order);
    assert_eq!(order["provider"], "wechat_v2");
    assert_eq!(
        order["qr_code_url"],
        format!("weixin://wxpay/bizpayurl?pr=v2{no}")
    );
    let seen = sandbox.sb.seen.lock().unwrap().clone();
    let (_, signed_ok, fields) = seen
        .iter()
        .find(|(p, _, _)| p == "/pay/unifiedorder")
        .expect("unifiedorder seen");
    assert!(signed_ok);
    assert_eq!(fields["sign_type"], "HMAC-SHA256");
    assert_eq!(fields["total_fee"], "990");
    assert_eq!(fields["trade_type"], "NATIVE");
    assert_eq!(
        fields["notify_url"],
        format!("{}/api/v1/notify/wechat", app.base)
    );
    // Beijing wall time, yyyyMMddHHmmss, equal to the order's expiry.
    let expire_at = time::OffsetDateTime::parse(
        order["expire_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let beijing = expire_at.to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap());
    let expected = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        beijing.year(),
        u8::from(beijing.month()),
        beijing.day(),
        beijing.hour(),
        beijing.minute(),
        beijing.second()
    );
    assert_eq!(fields["time_expire"], expected);

    sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, (200, true));
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    assert_eq!(
        sandbox.notify(&no).await,
        (200, true),
        "a repeat gets the success reply"
    );
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_v2_polling_close_race_refund_and_refund_notify() {
    let (app, sandbox) = start("3s").await;
    let u = app.token("v2-li");
    // Lost notification: the order query finds it.
    let polled = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&polled, None);
    // A payment racing the close: closeorder answers ORDERPAID, the last query decides.
    let racing = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.sb.pay_on_close.lock().unwrap().push(racing.clone());
    let idle = order_no(&app.order(&u, "basic", "wechat").await);
    app.wait_for_status(&u, &polled, "paid", Duration::from_secs(4))
        .await;
    app.wait_for_status(&u, &racing, "paid", Duration::from_secs(10))
        .await;
    app.wait_for_status(&u, &idle, "expired", Duration::from_secs(10))
        .await;
    assert_eq!(sandbox.trade(&idle).unwrap().state, "CLOSED");
    assert_eq!(app.entitlements(&u).await["points"], 220);

    // Refunds, signed and sent to the mutual-TLS endpoint, with their notification.
    let wechat = app.app().state().wechat_v2.clone().expect("v2 configured");
    assert!(wechat.refunds_enabled());
    let trade = TradeRef {
        order_no: polled.clone(),
        trade_ref: None,
        amount_minor: 990,
        currency: payd_actors::model::Currency::parse("CNY").unwrap(),
    };
    let req = |no: &str, amount| RefundRequest {
        trade: trade.clone(),
        refund_no: no.into(),
        amount_minor: amount,
        reason: "test".into(),
        transaction_id: None,
    };
    assert_eq!(
        wechat.refund(req("V2R1", 490)).await.unwrap().status,
        RefundStatus::Processing
    );
    assert_eq!(
        wechat.refund(req("V2R2", 500)).await.unwrap().status,
        RefundStatus::Processing
    );
    assert!(
        wechat
            .refund(req("V2R3", 1))
            .await
            .unwrap_err()
            .message
            .contains("NOTENOUGH")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let done = wechat.query_refund(req("V2R2", 500)).await.unwrap();
        let acked = sandbox
            .sb
            .deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, s, ok)| n == &polled && *s == 200 && *ok)
            .count();
        if done.status == RefundStatus::Succeeded && acked >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refund notifications never acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_v2_bad_notifications_are_rejected_counted_and_change_nothing() {
    let (app, sandbox) = start("60s").await;
    let u = app.token("v2-zhou");
    let no = order_no(&app.order(&u, "basic", "wechat").await);
    sandbox.pay(&no, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = app.fingerprint();
    let fields = sandbox.notify_fields(&no);
    let mut forged = sandbox.sign_notify(fields.clone(), V2SignType::HmacSha256);
    forged = forged.replace(
        "<total_fee><![CDATA[990]]></total_fee>",
        "<total_fee><![CDATA[1]]></total_fee>",
    );
    let mut foreign = fields.clone();
    foreign.insert("mch_id".into(), "1900000999".into());
    let mut unknown = fields.clone();
    unknown.insert(
        "out_trade_no".into(),
        "PD261122203315K3M9Q2XA7F4HD1RN".into(),
    );
    let mut unsigned = fields.clone();
    unsigned.remove("sign");
    let wrong_key_refund = to_xml(
        &[
            ("return_code", "SUCCESS"),
            ("appid", APPID),
            ("mch_id", MCHID),
            ("nonce_str", "abc"),
            (
                "req_info",
                crypto::v2_encrypt_req_info(
                    "<root><out_trade_no>x</out_trade_no></root>",
                    "0000000000000000000000000000000X",
                )
                .as_str(),
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    let cases = vec![
        (
            "forged signature",
            forged,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
        (
            "missing signature",
            to_xml(&unsigned),
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
        (
            "wrong mch_id",
            sandbox.sign_notify(foreign, V2SignType::HmacSha256),
            StatusCode::BAD_REQUEST,
            "wrong_merchant",
        ),
        (
            "unknown order",
            sandbox.sign_notify(unknown, V2SignType::Md5),
            StatusCode::BAD_REQUEST,
            "unknown_order",
        ),
        (
            "malformed XML",
            "<xml><return_code>SUCCESS".to_string(),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "XXE doctype",
            "<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><a>&x;</a></xml>"
                .to_string(),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "oversized",
            format!("<xml><a>{}</a></xml>", "b".repeat(70 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "refund info under another key",
            wrong_key_refund,
            StatusCode::UNAUTHORIZED,
            "undecryptable",
        ),
    ];
    let log = app.app().state().rejections.clone();
    for (name, body, status, reason) in cases {
        let counted = log.count("wechat", reason);
        let (got, reply) = post_xml(&app, "/api/v1/notify/wechat", body).await;
        assert_eq!(got, status, "{name}: {reply}");
        assert!(
            reply.contains("<return_code><![CDATA[FAIL]]></return_code>"),
            "{name}: {reply}"
        );
        assert_eq!(log.count("wechat", reason), counted + 1, "{name}");
    }
    assert_eq!(app.fingerprint(), before);
    // MD5-signed (as older integrations are) and genuine: accepted.
    let (status, reply) = post_xml(
        &app,
        "/api/v1/notify/wechat",
        sandbox.sign_notify(fields, V2SignType::Md5),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(3))
        .await;

    // One fen short: acknowledged, an anomaly, nothing granted.
    let short = order_no(&app.order(&u, "basic", "wechat").await);
    sandbox.pay(&short, Some(989));
    assert_eq!(sandbox.notify(&short).await, (200, true));
    app.wait_for_status(&u, &short, "failed", Duration::from_secs(3))
        .await;
    assert_eq!(
        app.stored_order(&short).anomalies[0].kind,
        AnomalyKind::AmountMismatch
    );
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        json!(100)
    );
    app.stop().await;
}

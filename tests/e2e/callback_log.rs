//! The callback log's admin routes, with real WeChat Pay v3 callbacks from the
//! sandbox: list, statistics, and re-processing a logged callback (verified again as
//! of when it was received, applied idempotently through the order's actor).

use std::time::Duration;

use payd_actors::model::{NotificationRecord, ProviderKind, Timestamp};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestApp, now_secs, order_no};
use crate::wechat_sandbox::*;

async fn start() -> (TestApp, WechatSandbox) {
    let sandbox = WechatSandbox::start().await;
    let certs = tempfile::tempdir().unwrap().keep();
    // payd refuses a private key every user can read: use a private copy.
    let key = tempfile::tempdir().unwrap().keep().join("merchant.pem");
    std::fs::copy(fixture("vectors/merchant_rsa2048_private_pkcs8.pem"), &key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let wechat = format!(
        r#"
[wechat]
app_id = "{APPID}"
mch_id = "{MCHID}"
api_v3_key = "{APIV3_KEY}"
private_key_path = {key:?}
cert_serial_no = "{MERCHANT_SERIAL}"
platform_public_key_path = {pubkey:?}
platform_public_key_id = "{PUB_KEY_ID}"
platform_cert_dir = {certs:?}
base_url = "{base}"
"#,
        key = key.display().to_string(),
        pubkey = fixture("vectors/provider_rsa2048_public.pem")
            .display()
            .to_string(),
        certs = certs.display().to_string(),
        base = sandbox.base,
    );
    // Polling out of the way: callbacks (and their re-processing) decide here.
    let app = TestApp::spawn_real(
        &[
            ("order_expire = \"4s\"", "order_expire = \"60s\""),
            ("query_interval = \"1s\"", "query_interval = \"50s\""),
        ],
        &wechat,
    )
    .await;
    (app, sandbox)
}

async fn post_raw(app: &TestApp, body: &str, headers: &[(String, String)]) -> StatusCode {
    let mut req = app
        .client
        .post(format!("{}/api/v1/notify/wechat", app.base))
        .body(body.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_log_lists_counts_and_reprocesses_callbacks() {
    let (app, sandbox) = start().await;
    let (u, admin) = (app.token("nina"), app.admin_token());
    let no = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, 204);
    assert_eq!(sandbox.notify(&no).await, 204, "a repeat is acknowledged");
    // A forgery: refused, counted in memory, never logged.
    let (body, mut headers) = sandbox.notification_for("EV-forged", &sandbox.transaction_json(&no));
    headers.retain(|(k, _)| k != "Wechatpay-Signature");
    headers.push(("Wechatpay-Signature".into(), "Zm9yZ2Vk".into()));
    assert_eq!(
        post_raw(&app, &body, &headers).await,
        StatusCode::UNAUTHORIZED
    );

    let (status, list) = app
        .get("/api/v1/admin/notifications?provider=wechat_v3", &admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 1);
    let item = &list["items"][0];
    let id = format!("wechat_v3:EV-{no}");
    assert_eq!(item["id"], id);
    assert_eq!(
        (
            item["status"].as_str(),
            item["deliveries"].as_u64(),
            item["order_no"].as_str()
        ),
        (Some("processed"), Some(2), Some(no.as_str()))
    );
    assert!(
        item["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "wechatpay-signature")
    );
    for (query, total) in [
        ("?provider=wechat", 1),
        ("?provider=stripe", 0),
        ("?status=processed", 1),
        ("?status=duplicate", 0),
    ] {
        let (_, l) = app
            .get(&format!("/api/v1/admin/notifications{query}"), &admin)
            .await;
        assert_eq!(l["total"], total, "{query}: {l}");
    }
    let (status, _) = app
        .get("/api/v1/admin/notifications?provider=paypal", &admin)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (status, stats) = app
        .get("/api/v1/admin/notifications/statistics", &admin)
        .await;
    assert_eq!(status, StatusCode::OK);
    let w = &stats["providers"]["wechat"];
    assert_eq!(
        (
            w["received"].as_u64(),
            w["verified"].as_u64(),
            w["processed"].as_u64(),
            w["duplicates"].as_u64(),
            w["rejected_total"].as_u64()
        ),
        (Some(3), Some(2), Some(1), Some(1), Some(1)),
        "{stats}"
    );
    assert_eq!(w["rejected"]["bad_signature"], 1, "{stats}");

    // Re-processing an applied callback changes nothing: granted once.
    let (status, r) = app
        .post(
            &format!("/api/v1/admin/notifications/{id}/retry"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["result"], "unchanged");
    assert_eq!(app.entitlements(&u).await["points"], 110);
    let (status, _) = app
        .post(
            "/api/v1/admin/notifications/wechat_v3:EV-none/retry",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/api/v1/admin/notifications", &u).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await;
}

/// Logs a callback as if it had arrived `age_secs` ago, signed then.
async fn log_old_callback(
    app: &TestApp,
    sandbox: &WechatSandbox,
    no: &str,
    event_id: &str,
    age_secs: i64,
    tamper: bool,
) -> (String, Vec<(String, String)>) {
    let then = now_secs() as i64 - age_secs;
    let (mut body, _) = sandbox.notification_for(event_id, &sandbox.transaction_json(no));
    let headers = sandbox.sign_headers(body.as_bytes(), Some(then));
    if tamper {
        body = body.replacen("TRANSACTION.SUCCESS", "TRANSACTION.SUCCESZ", 1);
    }
    let record = NotificationRecord {
        provider: ProviderKind::WechatV3,
        event_id: event_id.into(),
        order_no: no.into(),
        result: "logged".into(),
        source_ip: Some("127.0.0.1".into()),
        received_at: Timestamp(then * 1000),
        deliveries: 1,
        raw_body: body.clone().into_bytes(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
    };
    payd_actors::commands::log_notification(&app.app().state().store, record)
        .await
        .unwrap();
    (body, headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_callback_is_reverified_as_of_its_arrival_and_applied_once() {
    let (app, sandbox) = start().await;
    let (u, admin) = (app.token("otto"), app.admin_token());
    let no = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&no, None);
    // The payment's callback was logged an hour ago, but never applied (say the
    // order actor was down). Sent now, it would be stale …
    let (body, headers) = log_old_callback(&app, &sandbox, &no, "EV-old", 3600, false).await;
    assert_eq!(
        post_raw(&app, &body, &headers).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.stored_order(&no).status,
        payd_actors::model::OrderStatus::Pending
    );

    // … but re-processed from the log it verifies as of its arrival and pays the order.
    let id = "wechat_v3:EV-old";
    let (status, r) = app
        .post(
            &format!("/api/v1/admin/notifications/{id}/retry"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (r["result"].as_str(), r["order"]["status"].as_str()),
        (Some("processed"), Some("paid"))
    );
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(2))
        .await;
    assert_eq!(app.entitlements(&u).await["points"], 110);
    // Again: idempotent.
    let (_, r) = app
        .post(
            &format!("/api/v1/admin/notifications/{id}/retry"),
            &admin,
            None,
        )
        .await;
    assert_eq!(r["result"], "unchanged");
    assert_eq!(app.entitlements(&u).await["points"], 110);
    let (_, audit) = app.get("/api/v1/admin/audit", &admin).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a: &Value| a["action"] == "notification.retry" && a["target"] == id)
    );

    // Everything but freshness is still checked: a body changed after signing fails.
    let no2 = order_no(&app.order(&u, "coins_100", "wechat").await);
    sandbox.pay(&no2, None);
    log_old_callback(&app, &sandbox, &no2, "EV-tampered", 60, true).await;
    let (status, r) = app
        .post(
            "/api/v1/admin/notifications/wechat_v3:EV-tampered/retry",
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert_eq!(r["code"], "verification_failed");
    assert_eq!(
        app.stored_order(&no2).status,
        payd_actors::model::OrderStatus::Pending
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alipay_notify_is_reprocessed_from_the_log_idempotently() {
    use crate::alipay_sandbox::{APP_ID, AlipaySandbox, SELLER_ID};
    let sandbox = AlipaySandbox::start().await;
    let key: String =
        std::fs::read_to_string(fixture("vectors/merchant_rsa2048_private_pkcs8.pem"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
    let alipay = format!(
        r#"
[alipay]
app_id = "{APP_ID}"
seller_id = "{SELLER_ID}"
private_key = "{key}"
alipay_public_key_path = {pubkey:?}
gateway = "{gateway}"
"#,
        pubkey = fixture("vectors/provider_rsa2048_public.pem")
            .display()
            .to_string(),
        gateway = sandbox.gateway(),
    );
    let app = TestApp::spawn_real(
        &[
            ("order_expire = \"4s\"", "order_expire = \"60s\""),
            ("query_interval = \"1s\"", "query_interval = \"50s\""),
        ],
        &alipay,
    )
    .await;
    let (u, admin) = (app.token("pia"), app.admin_token());
    let no = order_no(&app.order(&u, "coins_100", "alipay_qr").await);
    sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, "success");
    let (_, list) = app
        .get("/api/v1/admin/notifications?provider=alipay", &admin)
        .await;
    assert_eq!(list["total"], 1, "{list}");
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    let (status, r) = app
        .post(
            &format!("/api/v1/admin/notifications/{id}/retry"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (r["result"].as_str(), r["order"]["status"].as_str()),
        (Some("unchanged"), Some("paid"))
    );
    assert_eq!(app.entitlements(&u).await["points"], 110);
    app.stop().await;
}

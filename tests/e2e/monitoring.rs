//! Watching and protecting payd over real HTTP: rate limits and trusted proxies, the
//! admin monitor routes, `/metrics`, callback allowlists and the recent-callback
//! cache, security headers and CORS, and secrets kept out of every log line.

use std::time::Duration;

use payd_actors::model::ProviderKind;
use payd_actors::tables::NOTIFICATIONS;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, order_no};
use crate::wechat_sandbox::*;

/// A payment request from 127.0.0.1, or from `forwarded_for` through it as a proxy.
async fn create(app: &TestApp, token: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/api/v1/orders", app.base))
        .bearer_auth(token)
        .json(&json!({"package_id": "coins_100", "payment_method": "mock"}));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_21st_payment_request_in_a_minute_gets_429_while_a_client_behind_the_trusted_proxy_does_not()
 {
    let app = TestApp::spawn_with_replacements(&[
        ("payment_per_minute = 100000", "payment_per_minute = 20"),
        (
            "bind = \"127.0.0.1:0\"",
            "bind = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]",
        ),
    ])
    .await;
    let u = app.token("rita");
    let first: Vec<StatusCode> =
        futures_util::future::join_all((0..20).map(|_| create(&app, &u, None)))
            .await
            .iter()
            .map(|r| r.status())
            .collect();
    assert!(first.iter().all(|s| *s == StatusCode::CREATED), "{first:?}");

    let refused = create(&app, &u, None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");
    assert_eq!(problem["status"], 429);

    // Another client, named by the trusted proxy, has its own allowance.
    let other = create(&app, &u, Some("198.51.100.7")).await;
    assert_eq!(other.status(), StatusCode::CREATED);
    // Reads draw on another allowance.
    let (status, _) = app.get("/api/v1/orders", &u).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
    let app = TestApp::spawn_with_replacements(&[(
        "payment_per_minute = 100000",
        "payment_per_minute = 2",
    )])
    .await;
    let u = app.token("mallory");
    for _ in 0..2 {
        assert_eq!(create(&app, &u, None).await.status(), StatusCode::CREATED);
    }
    // Claiming to be someone else does not buy a fresh allowance.
    let spoofed = create(&app, &u, Some("203.0.113.50")).await;
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

async fn admin_get(app: &TestApp, path: &str) -> Value {
    let (status, body) = app.get(path, &app.admin_token()).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn rules(alerts: &Value) -> Vec<String> {
    let mut rules: Vec<String> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["rule"].as_str().unwrap().to_string())
        .collect();
    rules.sort();
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_status_shows_rates_and_alerts_and_the_history_keeps_them_after_they_resolve() {
    let app = TestApp::spawn_with(
        "[monitor]\nmin_volume = 2\nlarge_transaction = { CNY = 2000, USD = 20000 }\n",
    )
    .await;
    let (status, _) = app
        .get("/api/v1/admin/monitor/status", &app.token("u"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let quiet = admin_get(&app, "/api/v1/admin/monitor/status").await;
    assert_eq!(quiet["health"], "ok", "{quiet}");
    assert_eq!(quiet["active_alerts"], json!([]));
    assert_eq!(quiet["window"]["failure_rate"], Value::Null);

    // One paid, one failed: 50 % failures over min_volume; and one large payment.
    let u = app.token("una");
    let paid = order_no(&app.order(&u, "coins_100", "mock").await);
    app.pay(&u, &paid, "").await;
    let failed = order_no(&app.order(&u, "coins_100", "mock").await);
    let (status, _) = app
        .post(&format!("/api/v1/mock/orders/{failed}/fail"), &u, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let large = order_no(&app.order(&u, "premium", "mock").await);
    app.pay(&u, &large, "").await;

    let s = admin_get(&app, "/api/v1/admin/monitor/status").await;
    assert_eq!(s["health"], "critical", "{s}");
    assert_eq!(
        rules(&s["active_alerts"]),
        ["failure_rate", "large_payment"],
        "{s}"
    );
    let w = &s["window"];
    assert_eq!(
        (
            w["created"].as_u64(),
            w["paid"].as_u64(),
            w["failed"].as_u64()
        ),
        (Some(3), Some(2), Some(1))
    );
    assert!(
        (w["failure_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9,
        "{w}"
    );
    assert_eq!(w["amounts"]["CNY"]["paid"], 990 + 2990);
    assert_eq!(w["large_payments"], 1);
    assert_eq!(w["active_users"], 1);
    assert_eq!(s["day"]["paid"], 2);
    let large_alert = s["active_alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "large_payment")
        .unwrap()
        .clone();
    assert_eq!(large_alert["subject"], large.as_str());
    assert_eq!(large_alert["status"], "firing");

    // Enough successful payments bring the failure rate back under 10 %.
    for i in 0..8 {
        let buyer = app.token(&format!("buyer{i}"));
        let no = order_no(&app.order(&buyer, "coins_100", "mock").await);
        app.pay(&buyer, &no, "").await;
    }
    let s = admin_get(&app, "/api/v1/admin/monitor/status").await;
    assert_eq!(rules(&s["active_alerts"]), ["large_payment"], "{s}");
    assert_eq!(s["health"], "degraded");

    let history = admin_get(&app, "/api/v1/admin/monitor/alerts?page=1&page_size=10").await;
    assert_eq!(history["total"], 2, "{history}");
    let failure = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "failure_rate")
        .unwrap();
    assert_eq!(failure["status"], "resolved");
    assert_eq!(failure["severity"], "critical");
    assert!(failure["resolved_at"].is_string() && failure["fired_at"].is_string());
    let (status, body) = app
        .get("/api/v1/admin/monitor/alerts?page=0", &app.admin_token())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

async fn metrics_text(url: &str) -> String {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_route_templates_never_order_numbers_and_start_at_zero() {
    let app = TestApp::spawn().await;
    let u = app.token("user-mia-7731");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    app.pay(&u, &no, "").await;
    let (status, _) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics_text(&format!("{}/metrics", app.base)).await;
    assert!(
        text.contains(
            "payd_http_requests_total{route=\"/api/v1/orders/{order_no}\",method=\"GET\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(!text.contains(&no), "no order number in any label");
    assert!(!text.contains("user-mia-7731"), "no user id in any label");
    for series in [
        "payd_order_transitions_total{from=\"pending\",to=\"paid\",method=\"mock\"}",
        "payd_payment_amount_minor_total{currency=\"CNY\"}",
        "payd_callbacks_rejected_total{provider=\"alipay\",reason=\"bad_signature\"}",
        "payd_provider_errors_total{provider=\"stripe\",operation=\"refund\"}",
        "payd_alerts_firing{rule=\"storage_errors\",severity=\"critical\"}",
        "payd_storage_commit_duration_seconds_bucket",
        "payd_storage_batch_commands_bucket",
        "payd_http_request_duration_seconds_bucket",
        "payd_order_actors_live",
        "payd_storage_healthy 1",
        "payd_rate_limited_total{class=\"payment\"}",
    ] {
        assert!(text.contains(series), "missing {series}");
    }
    // Every name is one of the documented constants.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for line in text.lines().filter(|l| l.starts_with("payd_")) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            readme.contains(&format!("`{base}`")),
            "{base} is not in the README's table"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener_when_metrics_bind_is_set() {
    let app = TestApp::spawn_with_replacements(&[(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\nmetrics_bind = \"127.0.0.1:0\"",
    )])
    .await;
    let separate = app.app().metrics_addr().expect("a metrics listener");
    assert_ne!(separate, app.app().addr());
    let text = metrics_text(&format!("http://{separate}/metrics")).await;
    assert!(text.contains("payd_http_requests_total"));
    let main = reqwest::get(format!("{}/metrics", app.base)).await.unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_from_outside_its_allowlist_is_refused_before_parsing_and_counted() {
    let app = TestApp::spawn_with("[notify.allowed_ips]\nstripe = [\"192.0.2.0/24\"]\n").await;
    let resp = app
        .client
        .post(format!("{}/api/v1/notify/stripe", app.base))
        .body("{not even json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let rejections = app.app().state().rejections.recent();
    assert_eq!(rejections.len(), 1);
    assert_eq!(
        (rejections[0].provider, rejections[0].reason),
        ("stripe", "source_not_allowed")
    );
    assert_eq!(rejections[0].source_ip.as_deref(), Some("127.0.0.1"));
    // Providers without an allowlist are not affected (Stripe is not configured
    // here, so WeChat answers 404 from its handler, not 403 from the allowlist).
    let resp = app
        .client
        .post(format!("{}/api/v1/notify/wechat", app.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn wechat_app() -> (TestApp, WechatSandbox) {
    let sandbox = WechatSandbox::start().await;
    let certs = tempfile::tempdir().unwrap().keep();
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
        key = fixture("vectors/merchant_rsa2048_private_pkcs8.pem")
            .display()
            .to_string(),
        pubkey = fixture("vectors/provider_rsa2048_public.pem")
            .display()
            .to_string(),
        certs = certs.display().to_string(),
        base = sandbox.base,
    );
    let app = TestApp::spawn_real(
        &[("order_expire = \"4s\"", "order_expire = \"60s\"")],
        &wechat,
    )
    .await;
    (app, sandbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_callback_is_answered_from_the_cache_without_waking_the_order() {
    let (app, sandbox) = wechat_app().await;
    let u = app.token("chen");
    let no = order_no(&app.order(&u, "basic", "wechat_native").await);
    sandbox.pay(&no, None);
    assert_eq!(sandbox.notify(&no).await, 204);
    app.wait_for_status(&u, &no, "paid", Duration::from_secs(5))
        .await;
    let cache = &app.app().state().protection.callbacks;
    assert!(cache.seen("wechat", &format!("EV-{no}")));

    // Let the order's actor passivate, then deliver the callback twice more.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.stats().await.live_actors > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "actor never passivated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let activations = app.stats().await.activations;
    for _ in 0..2 {
        assert_eq!(
            sandbox.notify(&no).await,
            204,
            "the provider's success reply"
        );
    }
    let stats = app.stats().await;
    assert_eq!(stats.activations, activations, "no actor was woken");
    assert_eq!(stats.live_actors, 0);
    // Each delivery is still counted on the logged record.
    let logged = app
        .app()
        .state()
        .store
        .read()
        .unwrap()
        .get(
            &NOTIFICATIONS,
            &("wechat_v3".to_string(), format!("EV-{no}")),
        )
        .unwrap()
        .expect("logged");
    assert_eq!(
        (logged.result.as_str(), logged.deliveries, logged.provider),
        ("processed", 3, ProviderKind::WechatV3)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_answers_carry_security_headers_and_cors_is_off_unless_configured() {
    let app = TestApp::spawn().await;
    let resp = app
        .client
        .get(format!("{}/api/v1/packages", app.base))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    let h = resp.headers();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(h.get("access-control-allow-origin").is_none());
    app.stop().await;

    let app = TestApp::spawn_with_replacements(&[(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\ncors_origins = [\"https://shop.example\"]",
    )])
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/v1/orders", app.base),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

const JWT_SECRET: &str = "jwt-secret-never-logged-6f1d0c";
const STRIPE_SECRET: &str = "sk_test_never_logged_51Hq2xP";
const WEBHOOK_SECRET: &str = "whsec_never_logged_9c2b7e";

/// Every log line of the suite is checked for secrets (see `logcheck`); this test
/// hands payd more of them than most — a custom JWT secret, Stripe keys, tokens
/// refused for being forged, a WebSocket ticket — and checks `/readyz` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_a_log_line_or_readyz() {
    let app = TestApp::spawn_with_replacements(&[
        (
            "jwt_secret = \"test-secret-0123456789abcdef\"",
            &format!("jwt_secret = \"{JWT_SECRET}\""),
        ),
        (
            "[providers]",
            &format!(
                "[stripe]\nsecret_key = \"{STRIPE_SECRET}\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\napi_base = \"http://127.0.0.1:9\"\n[providers]"
            ),
        ),
    ])
    .await;
    let lines_before = crate::logcheck::lines();
    let token = app.token("sam");
    let no = order_no(&app.order(&token, "basic", "mock").await);
    app.pay(&token, &no, "").await;
    admin_get(&app, "/api/v1/admin/monitor/status").await;
    let (_, ticket) = app.post("/api/v1/ws/ticket", &token, None).await;
    if let Some(ticket) = ticket["ticket"].as_str() {
        crate::logcheck::secret("a WebSocket ticket", ticket);
        let _ = app
            .client
            .get(format!("{}/api/v1/ws?ticket={ticket}", app.base))
            .send()
            .await;
    }
    // A token signed with another key, refused.
    let other = payd::auth::Jwt::new(&payd::config::AuthConfig {
        jwt_secret: payd::config::Secret::new("another-secret-0123456789"),
        leeway: Duration::from_secs(0),
        issuer: None,
        audience: None,
    });
    let forged = other.mint("sam", true, crate::support::now_secs(), 600);
    crate::logcheck::secret("a forged token", &forged);
    let (status, _) = app.get("/api/v1/orders", &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A webhook whose made-up signature carries the webhook secret itself.
    let resp = app
        .client
        .post(format!("{}/api/v1/notify/stripe", app.base))
        .header("stripe-signature", format!("t=1,v1={WEBHOOK_SECRET}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let (_, ready) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    for secret in [JWT_SECRET, STRIPE_SECRET, WEBHOOK_SECRET, &token, &forged] {
        assert!(
            !ready.to_string().contains(secret),
            "a secret reached /readyz"
        );
    }
    assert!(
        crate::logcheck::lines() > lines_before + 10,
        "the suite's log lines are being checked"
    );
    app.stop().await;
    crate::logcheck::assert_clean();
}

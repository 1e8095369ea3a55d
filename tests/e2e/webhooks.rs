//! Outbound webhooks to the host application, over real HTTP: a receiver in the test
//! (a small axum server) checks every signature and records what it accepted.
//! Delivery is at least once and in order per order, survives a receiver that is
//! down and a restart of payd, and the outbox can be listed and re-sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::{TestApp, now_secs, order_no};

const SECRET: &str = "whsec_host_app_0123456789";

#[derive(Default)]
struct Seen {
    /// Events answered 2xx, in arrival order.
    accepted: Mutex<Vec<Value>>,
    attempts: AtomicU32,
    bad_signatures: AtomicU32,
    /// While set, every request is answered 500.
    failing: AtomicBool,
    /// Each request waits this long before it is answered.
    delay_ms: AtomicU64,
}

struct Receiver {
    url: String,
    seen: Arc<Seen>,
}

/// The host application's side of the signature check, as the README shows it.
fn verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("payd-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now_secs() as i64 - t).abs() > 300 {
        return false;
    }
    v1.iter().any(|sig| {
        let Ok(sig) = data_encoding::HEXLOWER.decode(sig.as_bytes()) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

async fn receive(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    seen.attempts.fetch_add(1, Ordering::SeqCst);
    let delay = seen.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if !verify(&headers, &body) {
        seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST;
    }
    if seen.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let event: Value = serde_json::from_slice(&body).expect("JSON event");
    assert_eq!(
        headers.get("payd-event-id").and_then(|v| v.to_str().ok()),
        event["id"].as_str()
    );
    seen.accepted.lock().unwrap().push(event);
    StatusCode::NO_CONTENT
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, Arc::new(Seen::default()))
    }

    /// A port nobody listens on yet, and the receiver that will listen there later.
    fn reserve() -> (String, u16) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (format!("http://127.0.0.1:{port}/payd/events"), port)
    }

    async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener, Arc::new(Seen::default()))
    }

    fn serve(listener: tokio::net::TcpListener, seen: Arc<Seen>) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let router = Router::new()
            .route("/payd/events", post(receive))
            .with_state(seen.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver {
            url: format!("http://{addr}/payd/events"),
            seen,
        }
    }

    fn accepted(&self) -> Vec<Value> {
        self.seen.accepted.lock().unwrap().clone()
    }

    /// Waits until `n` distinct events were accepted; returns everything accepted.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.accepted();
            let distinct: HashSet<&str> = got.iter().filter_map(|e| e["id"].as_str()).collect();
            if distinct.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} events arrived: {:#?}",
                distinct.len(),
                got.iter().map(|e| &e["id"]).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn webhooks_config(url: &str, retry: &[&str]) -> String {
    let retry: Vec<String> = retry.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[webhooks]\nurl = {url:?}\nsecret = {SECRET:?}\nretry = [{}]\ntimeout = \"2s\"\n",
        retry.join(", ")
    )
}

/// Each order's accepted events (ids and types), in arrival order.
fn by_order(accepted: &[Value]) -> HashMap<String, Vec<(String, String)>> {
    let mut out: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for e in accepted {
        out.entry(e["data"]["order"]["order_no"].as_str().unwrap().to_string())
            .or_default()
            .push((
                e["id"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            ));
    }
    out
}

/// Every expected event of every order arrived, and an order's event never arrived
/// before all of its earlier ones had (a repeat of one already accepted is allowed:
/// delivery is at least once).
fn assert_in_order(accepted: &[Value], expected: &HashMap<String, Vec<&str>>) {
    let got = by_order(accepted);
    for (order, types) in expected {
        let events = got
            .get(order)
            .unwrap_or_else(|| panic!("nothing for {order}"));
        let mut firsts: Vec<(String, String)> = Vec::new();
        for (id, ty) in events {
            if firsts.iter().any(|(i, _)| i == id) {
                continue;
            }
            firsts.push((id.clone(), ty.clone()));
        }
        let got_types: Vec<&str> = firsts.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(&got_types, types, "order {order}: {events:?}");
        // A repeat only ever repeats the newest event accepted so far.
        let mut newest = 0;
        for (id, _) in events {
            let i = firsts.iter().position(|(f, _)| f == id).unwrap();
            assert!(i <= newest + 1, "order {order} went back: {events:?}");
            newest = newest.max(i);
        }
    }
}

async fn refund(app: &TestApp, admin: &str, no: &str, body: Value) {
    let r = app
        .client
        .post(format!("{}/api/v1/admin/orders/{no}/refunds", app.base))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
}

async fn paid(app: &TestApp, token: &str, package: &str) -> String {
    let no = order_no(&app.order(token, package, "mock").await);
    let (_, o) = app.pay(token, &no, "").await;
    assert_eq!(o["status"], "paid", "{o}");
    no
}

async fn webhooks(app: &TestApp, admin: &str, query: &str) -> Value {
    let (status, body) = app
        .get(&format!("/api/v1/admin/webhooks{query}"), admin)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    body
}

/// Waits until the outbox lists `total` events for `query`; returns that listing.
async fn wait_outbox(app: &TestApp, admin: &str, query: &str, total: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = webhooks(app, admin, query).await;
        if listed["total"] == total {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{query}: expected {total}: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_delivered_signed_once_and_in_order_per_order() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(&webhooks_config(&receiver.url, &["1s", "1s"])).await;
    let (u, admin) = (app.token("hannah"), app.admin_token());

    let refunded = paid(&app, &u, "basic").await;
    refund(&app, &admin, &refunded, json!({"reason": "asked"})).await;
    let cancelled = order_no(&app.order(&u, "coins_100", "mock").await);
    let (status, _) = app
        .post(&format!("/api/v1/orders/{cancelled}/cancel"), &u, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let partial = paid(&app, &u, "coins_100").await;
    refund(
        &app,
        &admin,
        &partial,
        json!({"amount": 300, "reason": "part"}),
    )
    .await;
    let mismatch = order_no(&app.order(&u, "coins_100", "mock").await);
    app.pay(&u, &mismatch, "?amount=1").await;

    let accepted = receiver.wait_for(10, Duration::from_secs(15)).await;
    let expected: HashMap<String, Vec<&str>> = [
        (
            refunded.clone(),
            vec![
                "order.paid",
                "refund.created",
                "refund.succeeded",
                "order.refunded",
            ],
        ),
        (cancelled.clone(), vec!["order.cancelled"]),
        (
            partial.clone(),
            vec![
                "order.paid",
                "refund.created",
                "refund.succeeded",
                "order.partially_refunded",
            ],
        ),
        (mismatch.clone(), vec!["order.failed"]),
    ]
    .into();
    assert_in_order(&accepted, &expected);
    // Once each: nothing was sent twice, and every signature checked out.
    let ids: HashSet<&str> = accepted.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!((ids.len(), accepted.len()), (10, 10));
    assert_eq!(receiver.seen.bad_signatures.load(Ordering::SeqCst), 0);

    // The shape: a stable id, the order as it was right after the change, the refund.
    let paid_event = accepted
        .iter()
        .find(|e| e["type"] == "order.paid" && e["data"]["order"]["order_no"] == refunded)
        .unwrap();
    assert!(
        paid_event["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{refunded}:"))
    );
    assert_eq!(paid_event["data"]["order"]["status"], "paid");
    assert!(paid_event["created"].as_str().unwrap().ends_with('Z'));
    let done = accepted
        .iter()
        .find(|e| e["type"] == "refund.succeeded" && e["data"]["order"]["order_no"] == partial)
        .unwrap();
    assert_eq!(done["data"]["refund"]["amount"], 300);
    assert_eq!(done["data"]["refund"]["status"], "succeeded");
    assert_eq!(
        done["id"],
        format!(
            "{}:succeeded",
            done["data"]["refund"]["refund_no"].as_str().unwrap()
        )
    );

    // The outbox says the same (the last acknowledgement may still be on its way to disk).
    let delivered = wait_outbox(&app, &admin, "?status=delivered&page_size=100", 10).await;
    assert!(
        delivered["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["attempts"] == 1 && e["delivered_at"].is_string())
    );
    assert_eq!(webhooks(&app, &admin, "?status=pending").await["total"], 0);
    let (status, _) = app.get("/api/v1/admin/webhooks", &u).await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_gets_everything_in_order_once_it_is_up() {
    let (url, port) = Receiver::reserve();
    let app = TestApp::spawn_with(&webhooks_config(&url, &["1s"; 10])).await;
    let (u, admin) = (app.token("ivan"), app.admin_token());
    let first = paid(&app, &u, "coins_100").await;
    refund(&app, &admin, &first, json!({"reason": "asked"})).await;
    let second = paid(&app, &u, "basic").await;
    let third = paid(&app, &u, "coins_100").await;

    // Every order's first event was tried and failed; the later ones wait behind it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending = webhooks(&app, &admin, "?status=pending&page_size=100").await;
        let tried = pending["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["attempts"].as_u64() >= Some(1))
            .count();
        if pending["total"] == 6 && tried == 3 {
            let failed = pending["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["attempts"].as_u64() >= Some(1))
                .unwrap();
            assert!(failed["last_error"].is_string(), "{failed}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not tried as expected: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let receiver = Receiver::start_on(port).await;
    let accepted = receiver.wait_for(6, Duration::from_secs(15)).await;
    let expected: HashMap<String, Vec<&str>> = [
        (
            first,
            vec![
                "order.paid",
                "refund.created",
                "refund.succeeded",
                "order.refunded",
            ],
        ),
        (second, vec!["order.paid"]),
        (third, vec!["order.paid"]),
    ]
    .into();
    assert_in_order(&accepted, &expected);
    assert_eq!(accepted.len(), 6, "each once");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_delivery_loses_nothing_and_reorders_nothing() {
    let receiver = Receiver::start().await;
    receiver.seen.delay_ms.store(300, Ordering::SeqCst);
    let mut app = TestApp::spawn_with(&webhooks_config(&receiver.url, &["1s"; 10])).await;
    let (u, admin) = (app.token("julia"), app.admin_token());
    let mut expected: HashMap<String, Vec<&str>> = HashMap::new();
    for _ in 0..4 {
        let no = paid(&app, &u, "coins_100").await;
        refund(&app, &admin, &no, json!({"reason": "asked"})).await;
        expected.insert(
            no,
            vec![
                "order.paid",
                "refund.created",
                "refund.succeeded",
                "order.refunded",
            ],
        );
    }
    // Wait until every event is in the outbox, then restart while they go out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while webhooks(&app, &admin, "").await["total"] != 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_before = webhooks(&app, &admin, "?status=delivered").await["total"]
        .as_u64()
        .unwrap();
    assert!(delivered_before < 16, "the restart must come mid-delivery");
    app.restart().await;

    let accepted = receiver.wait_for(16, Duration::from_secs(30)).await;
    assert_in_order(&accepted, &expected);
    let admin = app.admin_token();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while webhooks(&app, &admin, "?status=delivered").await["total"] != 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all recorded as delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.seen.bad_signatures.load(Ordering::SeqCst), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_dies_is_listed_and_can_be_resent() {
    let receiver = Receiver::start().await;
    receiver.seen.failing.store(true, Ordering::SeqCst);
    let app = TestApp::spawn_with(&webhooks_config(&receiver.url, &["1s"])).await;
    let (u, admin) = (app.token("karl"), app.admin_token());
    let no = paid(&app, &u, "coins_100").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = webhooks(&app, &admin, "?status=dead").await;
        if dead["total"] == 1 {
            break dead["items"][0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never died: {dead}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            dead["order_no"].as_str(),
            dead["type"].as_str(),
            dead["attempts"].as_u64()
        ),
        (Some(no.as_str()), Some("order.paid"), Some(2))
    );
    assert_eq!(dead["last_error"], "HTTP 500");
    assert_eq!(webhooks(&app, &admin, "?status=pending").await["total"], 0);
    assert!(receiver.accepted().is_empty());

    // The host application is fixed; the operator re-sends the dead event.
    receiver.seen.failing.store(false, Ordering::SeqCst);
    let id = dead["id"].as_str().unwrap();
    let (status, body) = app
        .post(&format!("/api/v1/admin/webhooks/{id}/resend"), &admin, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "pending");
    let accepted = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(accepted[0]["id"], id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while webhooks(&app, &admin, "?status=delivered").await["total"] != 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = app
        .post("/api/v1/admin/webhooks/PD0:1/resend", &admin, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    let (status, _) = app.get("/api/v1/admin/webhooks?status=lost", &admin).await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    // The re-send is in the audit log.
    let (_, audit) = app.get("/api/v1/admin/audit", &admin).await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "webhook.resend" && a["target"] == id)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_are_pruned_after_their_retention() {
    let receiver = Receiver::start().await;
    let config = format!(
        "{}\n[retention]\ninterval = \"1s\"\nwebhooks = \"1s\"\n",
        webhooks_config(&receiver.url, &["1s"])
    );
    let app = TestApp::spawn_with(&config).await;
    let (u, admin) = (app.token("lena"), app.admin_token());
    paid(&app, &u, "coins_100").await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while webhooks(&app, &admin, "").await["total"] != 0 {
        assert!(tokio::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_url_nothing_is_written_to_the_outbox() {
    let app = TestApp::spawn().await;
    let (u, admin) = (app.token("mona"), app.admin_token());
    paid(&app, &u, "coins_100").await;
    assert_eq!(webhooks(&app, &admin, "").await["total"], 0);
    let (status, body) = app
        .post("/api/v1/admin/webhooks/x:1/resend", &admin, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT);
    assert_eq!(body["code"], "webhooks_disabled");
    app.stop().await;
}

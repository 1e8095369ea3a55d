//! The buyer's side over real HTTP: live updates on the WebSocket (tickets, origin,
//! who hears what, slow clients, reconnects), QR codes as SVG, the payment-method
//! list, the checkout page's headers and the OpenAPI document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use payd::app::Application;
use payd::auth::Jwt;
use payd::config;
use payd_actors::clock::OffsetClock;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{BASE_CONFIG, TestApp, now_secs, order_no};

type Live = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(base: &str, ticket: &str) -> String {
    format!(
        "{}/api/v1/ws?ticket={ticket}",
        base.replacen("http://", "ws://", 1)
    )
}

async fn ticket(app: &TestApp, token: &str) -> String {
    let (status, body) = app.post("/api/v1/ws/ticket", token, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["ticket"].as_str().expect("ticket").to_string()
}

/// Opens a live connection with a fresh ticket, or returns the refusal's status.
async fn connect_with(base: &str, ticket: &str, origin: Option<&str>) -> Result<Live, StatusCode> {
    let mut request = ws_url(base, ticket).into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            Err(StatusCode::from_u16(response.status().as_u16()).unwrap())
        }
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

async fn live(app: &TestApp, token: &str) -> Live {
    let t = ticket(app, token).await;
    connect_with(&app.base, &t, None).await.expect("connected")
}

/// The next JSON message, skipping pings; panics after `within`.
async fn next_json(ws: &mut Live, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("frame");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Whether a message arrives within `within` (pings aside).
async fn quiet_for(ws: &mut Live, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
}

async fn subscribe(ws: &mut Live, order_no: &str) {
    ws.send(Message::text(
        json!({"type": "subscribe", "order_no": order_no}).to_string(),
    ))
    .await
    .unwrap();
}

/// A minter with the test configuration's secret.
fn test_jwt() -> Jwt {
    let text = format!("[storage]\npath = \"unused\"\n{BASE_CONFIG}");
    Jwt::new(&config::load_from_str(&text, &|_| None, &[]).unwrap().auth)
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_reach_only_the_orders_owner() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice");
    let bob = app.token("bob");
    let mut alice_ws = live(&app, &alice).await;
    let mut bob_ws = live(&app, &bob).await;

    let order = app.order(&alice, "basic", "wechat").await;
    let no = order_no(&order);
    let (status, _) = app.pay(&alice, &no, "").await;
    assert_eq!(status, StatusCode::OK);
    let first = next_json(&mut alice_ws, WAIT).await;
    assert_eq!(first["type"], "order_status");
    assert_eq!(first["order_no"], no.as_str());
    assert_eq!(first["status"], "paid");
    assert!(first["at"].as_str().unwrap().ends_with('Z'));
    let second = next_json(&mut alice_ws, WAIT).await;
    assert_eq!(
        (
            second["type"].as_str(),
            second["order_no"].as_str(),
            second["amount"].as_i64()
        ),
        (Some("payment_success"), Some(no.as_str()), Some(990))
    );

    // Bob's first message is about his own order, never Alice's.
    let bobs = app.order(&bob, "coins_100", "alipay").await;
    app.post(
        &format!("/api/v1/orders/{}/cancel", order_no(&bobs)),
        &bob,
        None,
    )
    .await;
    let heard = next_json(&mut bob_ws, WAIT).await;
    assert_eq!(heard["order_no"], order_no(&bobs).as_str());
    assert_eq!(heard["status"], "cancelled");
    // And subscribing to Alice's order tells him nothing about it.
    subscribe(&mut bob_ws, &no).await;
    let refused = next_json(&mut bob_ws, WAIT).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert!(refused.get("status").is_none());
    assert_eq!(
        quiet_for(&mut alice_ws, Duration::from_millis(300)).await,
        None
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_delay_anyone_else() {
    let app = TestApp::spawn().await;
    let carol = app.token("carol");
    let alice = app.token("alice");
    // Carol's socket has a tiny receive window and is never read.
    let t = ticket(&app, &carol).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let addr = app.app().addr();
    let stream = socket.connect(addr).await.unwrap();
    let (_carol_ws, _) = tokio_tungstenite::client_async(
        ws_url(&app.base, &t).into_client_request().unwrap(),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let mut alice_ws = live(&app, &alice).await;

    // Many events for Carol, all at once.
    let carol_orders: Vec<String> =
        futures_util::future::join_all((0..24).map(|_| app.order(&carol, "coins_100", "mock")))
            .await
            .iter()
            .map(order_no)
            .collect();
    let backlog =
        futures_util::future::join_all(carol_orders.iter().map(|no| app.pay(&carol, no, "")));
    let alice_order = app.order(&alice, "basic", "wechat").await;
    let (_, ()) = tokio::join!(backlog, async {
        let started = Instant::now();
        app.pay(&alice, &order_no(&alice_order), "").await;
        let heard = next_json(&mut alice_ws, WAIT).await;
        assert_eq!(heard["status"], "paid");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "Alice waited {:?}",
            started.elapsed()
        );
    });
    // Every one of Carol's payments went through regardless.
    for no in &carol_orders {
        assert_eq!(app.stored_order(no).status.as_str(), "paid");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gets_the_current_state_on_subscribe() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice");
    let order = app.order(&alice, "basic", "wechat").await;
    let no = order_no(&order);
    let mut ws = live(&app, &alice).await;
    subscribe(&mut ws, &no).await;
    let now = next_json(&mut ws, WAIT).await;
    assert_eq!(
        (now["type"].as_str(), now["status"].as_str()),
        (Some("order_status"), Some("pending"))
    );
    ws.close(None).await.unwrap();
    drop(ws);

    // Paid while nobody listened: the push went nowhere.
    app.pay(&alice, &no, "").await;
    let mut again = live(&app, &alice).await;
    subscribe(&mut again, &no).await;
    let now = next_json(&mut again, WAIT).await;
    assert_eq!(now["order_no"], no.as_str());
    assert_eq!(now["status"], "paid");

    // Nonsense gets a readable error, and the connection stays usable.
    again
        .send(Message::text("{\"type\":\"dance\"}"))
        .await
        .unwrap();
    assert_eq!(next_json(&mut again, WAIT).await["code"], "bad_message");
    subscribe(&mut again, "PD-not-an-order").await;
    assert_eq!(next_json(&mut again, WAIT).await["code"], "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_forged_and_missing_tickets_are_refused() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice");
    let t = ticket(&app, &alice).await;
    let ws = connect_with(&app.base, &t, None).await;
    assert!(ws.is_ok());
    assert_eq!(
        connect_with(&app.base, &t, None).await.err(),
        Some(StatusCode::UNAUTHORIZED),
        "a ticket is single use"
    );
    let forged = "A".repeat(43);
    assert_eq!(
        connect_with(&app.base, &forged, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let resp = app
        .client
        .get(format!("{}/api/v1/ws", app.base))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // No ticket without a token.
    let (status, body) = app
        .call(reqwest::Method::POST, "/api/v1/ws/ticket", None, None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    // A plain GET (no upgrade) is told what the route is.
    let (status, body) = app.get("/api/v1/ws?ticket=x", &alice).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("websocket_required"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ticket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[storage]\npath = {:?}\n{BASE_CONFIG}",
        dir.path().display().to_string()
    );
    let cfg = config::load_from_str(&text, &|_| None, &[]).unwrap();
    let jwt = Jwt::new(&cfg.auth);
    let clock = Arc::new(OffsetClock::default());
    let app = Application::build_with_clock(cfg, clock.clone())
        .await
        .unwrap();
    let base = format!("http://{}", app.addr());
    let token = jwt.mint("alice", false, now_secs(), 3600);
    let client = reqwest::Client::new();
    let issue = || async {
        let body: Value = client
            .post(format!("{base}/api/v1/ws/ticket"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["ticket"].as_str().unwrap().to_string()
    };
    let fresh = issue().await;
    let stale = issue().await;
    clock.advance_ms(61_000);
    assert_eq!(
        connect_with(&base, &stale, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    // Redeemed (and refused) once, it is gone for good.
    clock.advance_ms(-61_000);
    assert_eq!(
        connect_with(&base, &stale, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert!(connect_with(&base, &fresh, None).await.is_ok());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_and_configured_ones_are_not() {
    let app = TestApp::spawn_with_replacements(&[(
        "[server]\n",
        "[server]\ncors_origins = [\"https://shop.example\"]\n",
    )])
    .await;
    let alice = app.token("alice");
    let t = ticket(&app, &alice).await;
    assert_eq!(
        connect_with(&app.base, &t, Some("https://evil.example"))
            .await
            .err(),
        Some(StatusCode::FORBIDDEN)
    );
    // The refusal did not spend the ticket.
    assert!(
        connect_with(&app.base, &t, Some(&app.base)).await.is_ok(),
        "same origin"
    );
    let t = ticket(&app, &alice).await;
    assert!(
        connect_with(&app.base, &t, Some("https://shop.example"))
            .await
            .is_ok()
    );
    let t = ticket(&app, &alice).await;
    assert_eq!(
        connect_with(&app.base, &t, Some("null")).await.err(),
        Some(StatusCode::FORBIDDEN)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_closes_when_the_token_expires() {
    let app = TestApp::spawn().await;
    // Two seconds left on the token.
    let short = test_jwt().mint("dave", false, now_secs(), 2);
    let mut ws = live(&app, &short).await;
    let started = Instant::now();
    let frame = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time")
    .expect("with a reason");
    assert_eq!(frame.code, CloseCode::from(4001));
    assert!(started.elapsed() <= Duration::from_secs(4));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qr_code_is_an_svg_for_its_owner_cached_until_it_expires() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice");
    let order = app.order(&alice, "basic", "wechat").await;
    let no = order_no(&order);
    let url = format!("{}/api/v1/orders/{no}/qr.svg", app.base);
    let resp = app
        .client
        .get(&url)
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "image/svg+xml");
    let cache = resp.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_string();
    let max_age: u64 = cache
        .strip_prefix("private, max-age=")
        .unwrap_or_else(|| panic!("{cache}"))
        .parse()
        .unwrap();
    assert!(max_age <= 2, "the test QR lives 2 s: {cache}");
    let svg = resp.text().await.unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");

    // Someone else: not found.
    let (status, body) = app
        .get(&format!("/api/v1/orders/{no}/qr.svg"), &app.token("bob"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // Past its display expiry: refresh first.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = app
        .get(&format!("/api/v1/orders/{no}/qr.svg"), &alice)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("qr_expired"))
    );
    let (status, _) = app
        .post(&format!("/api/v1/orders/{no}/qr"), &alice, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(&format!("/api/v1/orders/{no}/qr.svg"), &alice)
        .await;
    assert_eq!(status, StatusCode::OK);
    // A redirect method has no QR code; a cancelled order has none to pay.
    let page = app.order(&alice, "basic", "alipay_page").await;
    let (status, body) = app
        .get(
            &format!("/api/v1/orders/{}/qr.svg", order_no(&page)),
            &alice,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("qr_not_available"))
    );
    app.post(&format!("/api/v1/orders/{no}/cancel"), &alice, None)
        .await;
    let (status, body) = app
        .get(&format!("/api/v1/orders/{no}/qr.svg"), &alice)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("order_not_pending"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_methods_say_what_can_be_paid_how() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .call(reqwest::Method::GET, "/api/v1/payment-methods", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["mock_mode"], true);
    let items = body["items"].as_array().unwrap();
    let find = |m: &str| items.iter().find(|i| i["method"] == m).unwrap().clone();
    assert_eq!(items.len(), 5, "mock mode serves every method: {body}");
    assert_eq!(
        find("wechat_native"),
        json!({"method": "wechat_native", "provider": "mock", "currencies": ["CNY"], "flow": "qr"})
    );
    assert_eq!(find("stripe_checkout")["currencies"], json!(["CNY", "USD"]));
    assert_eq!(find("alipay_page")["flow"], "redirect");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkout_page_is_served_with_strict_security_headers() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let resp = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
    }
    let html = app
        .client
        .get(&app.base)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("/assets/app.js") && !html.contains("http"),
        "self-contained"
    );
    app.stop().await;
}

/// Every path literal given to `.route(` in the HTTP layer's source.
fn routed_paths() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for (i, _) in source.match_indices(".route(") {
            let rest = source[i + ".route(".len()..].trim_start();
            if let Some(rest) = rest.strip_prefix('"') {
                paths.push(rest[..rest.find('"').unwrap()].to_string());
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// The methods the running router serves at `path`, read from a 405's `Allow`.
async fn served_methods(app: &TestApp, path: &str) -> Vec<String> {
    let concrete: String = path
        .split('/')
        .map(|s| if s.starts_with('{') { "PD0" } else { s })
        .collect::<Vec<_>>()
        .join("/");
    let probe = reqwest::Method::from_bytes(b"PROBE").unwrap();
    let resp = app
        .client
        .request(probe, format!("{}{concrete}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
    let allow = resp.headers()["allow"].to_str().unwrap().to_string();
    allow
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| m != "HEAD")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_routes_served() {
    let app = TestApp::spawn().await;
    let (status, doc) = app
        .call(reqwest::Method::GET, "/api-docs/openapi.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let paths = routed_paths();
    assert!(paths.len() > 20, "found the router: {paths:?}");
    let mut served = Vec::new();
    for path in &paths {
        for method in served_methods(&app, path).await {
            served.push((method, path.clone()));
        }
    }
    let undocumented: Vec<_> = served.iter().filter(|r| !documented.contains(r)).collect();
    let unserved: Vec<_> = documented.iter().filter(|r| !served.contains(r)).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in the OpenAPI document: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
    app.stop().await;
}

/// Every property `value` has is declared by `schema`, and every required one is there.
fn conforms(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    let props = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name}"));
    for key in value.as_object().unwrap().keys() {
        assert!(
            props.contains_key(key),
            "{name} lacks the property {key:?} sent in {value}"
        );
    }
    for key in schema["required"].as_array().unwrap() {
        assert!(
            value.get(key.as_str().unwrap()).is_some(),
            "{name} requires {key} but {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_schemas_match_what_the_server_sends() {
    let app = TestApp::spawn().await;
    let (_, doc) = app
        .call(reqwest::Method::GET, "/api-docs/openapi.json", None, None)
        .await;
    let alice = app.token("alice");
    let order = app.order(&alice, "basic", "wechat").await;
    conforms(&doc, "Order", &order);
    conforms(&doc, "PackageSnapshot", &order["package"]);
    let (_, paid) = app.pay(&alice, &order_no(&order), "").await;
    conforms(&doc, "Order", &paid);
    let (_, packages) = app.get("/api/v1/packages", &alice).await;
    for p in packages["items"].as_array().unwrap() {
        conforms(&doc, "Package", p);
    }
    let ent = app.entitlements(&alice).await;
    conforms(&doc, "Entitlements", &ent);
    conforms(&doc, "Membership", &ent["membership"]);
    let (_, methods) = app.get("/api/v1/payment-methods", &alice).await;
    conforms(&doc, "PaymentMethodList", &methods);
    conforms(&doc, "PaymentMethod", &methods["items"][0]);
    let (_, page) = app.get("/api/v1/orders", &alice).await;
    conforms(&doc, "OrderPage", &page);
    let (_, t) = app.post("/api/v1/ws/ticket", &alice, None).await;
    conforms(&doc, "WsTicket", &t);
    let (_, demo) = app
        .call(reqwest::Method::POST, "/api/v1/mock/demo-token", None, None)
        .await;
    conforms(&doc, "DemoToken", &demo);
    let (_, problem) = app.get("/api/v1/orders/PD0", &alice).await;
    conforms(&doc, "Problem", &problem);
    app.stop().await;
}

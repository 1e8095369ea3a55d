//! A protocol-faithful Stripe API sandbox: an axum server with its own secret key
//! and webhook signing secret. It checks `Authorization: Bearer sk_test_…` (401 with
//! Stripe's error JSON otherwise), requires `Stripe-Version`, honours
//! `Idempotency-Key` (the first answer is replayed; the same key with other
//! parameters is an `idempotency_error`), keeps Checkout Sessions, PaymentIntents and
//! refunds (never more refunded than captured), and delivers signed webhook events
//! (`Stripe-Signature: t=…,v1=…`) to the endpoint the test configures — Stripe has
//! no per-request notify URL — retrying until a 2xx, on a compressed schedule.
//!
//! As with Stripe, events are built from the object's state when they are created,
//! and the test decides when (and whether, and how often) each is delivered.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use payd::providers::stripe::{form, webhook};
use serde_json::{Map, Value, json};

pub(crate) const SECRET_KEY: &str = "sk_test_51PaydSandbox0000000000000000000000";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_paydSandboxSigningSecret0123456789";

static IDS: AtomicU64 = AtomicU64::new(1);

fn new_id(prefix: &str) -> String {
    let n = IDS.fetch_add(1, Ordering::Relaxed);
    let salt: u32 = rand::random();
    format!("{prefix}_test_{n:06}{salt:08x}")
}

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One API request as the sandbox saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) authorized: bool,
    pub(crate) stripe_version: Option<String>,
    pub(crate) idempotency_key: Option<String>,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) replayed: bool,
}

/// One webhook delivery attempt: event id, type, HTTP status (0: unreachable).
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) event_id: String,
    pub(crate) kind: String,
    pub(crate) status: u16,
}

/// A request's parameters (form body and query), decoded.
type Params = BTreeMap<String, String>;
/// An API answer: status and JSON body.
type Answer = (StatusCode, Value);

#[derive(Debug, Clone)]
struct StoredAnswer {
    fingerprint: String,
    status: StatusCode,
    body: Value,
}

pub(crate) struct Sandbox {
    base: String,
    pub(crate) sessions: Mutex<HashMap<String, Value>>,
    /// `payment_intent_data[metadata]` per session, copied to its PaymentIntent.
    intent_metadata: Mutex<HashMap<String, Value>>,
    pub(crate) intents: Mutex<HashMap<String, Value>>,
    /// In creation order.
    pub(crate) refunds: Mutex<Vec<Value>>,
    pub(crate) disputes: Mutex<HashMap<String, Value>>,
    idempotency: Mutex<HashMap<String, StoredAnswer>>,
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) deliveries: Mutex<Vec<Delivery>>,
    pub(crate) endpoint: Mutex<Option<String>>,
    /// Orders whose buyer pays at the very moment the merchant expires the session.
    pub(crate) pay_on_expire: Mutex<Vec<String>>,
    /// Largest page `/v1/balance_transactions` serves (tests lower it to page).
    pub(crate) balance_page_max: Mutex<usize>,
    /// PaymentIntents whose charge the balance leaves out.
    pub(crate) balance_hide: Mutex<Vec<String>>,
    client: reqwest::Client,
}

pub(crate) struct StripeSandbox {
    pub(crate) base: String,
    pub(crate) sb: Arc<Sandbox>,
}

fn error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> (StatusCode, Value) {
    let mut e = json!({"type": kind, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
    }
    (status, json!({ "error": e }))
}

fn respond((status, body): (StatusCode, Value), replayed: bool) -> Response {
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert(
        "request-id",
        format!("req_{}", IDS.fetch_add(1, Ordering::Relaxed))
            .parse()
            .unwrap(),
    );
    if replayed {
        h.insert("idempotent-replayed", "true".parse().unwrap());
    }
    r
}

fn nested(params: &BTreeMap<String, String>, prefix: &str) -> Value {
    let mut m = Map::new();
    for (k, v) in params {
        if let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('['))
            && let Some(name) = rest.strip_suffix(']').filter(|n| !n.contains('['))
        {
            m.insert(name.to_string(), json!(v));
        }
    }
    Value::Object(m)
}

impl StripeSandbox {
    pub(crate) async fn start() -> StripeSandbox {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let sb = Arc::new(Sandbox {
            base: base.clone(),
            sessions: Mutex::new(HashMap::new()),
            intent_metadata: Mutex::new(HashMap::new()),
            intents: Mutex::new(HashMap::new()),
            refunds: Mutex::new(Vec::new()),
            disputes: Mutex::new(HashMap::new()),
            idempotency: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            endpoint: Mutex::new(None),
            pay_on_expire: Mutex::new(Vec::new()),
            balance_page_max: Mutex::new(100),
            balance_hide: Mutex::new(Vec::new()),
            client: reqwest::Client::new(),
        });
        let router = Router::new()
            .route("/v1/checkout/sessions", post(create_session))
            .route("/v1/checkout/sessions/{id}", get(retrieve_session))
            .route("/v1/checkout/sessions/{id}/expire", post(expire_session))
            .route("/v1/payment_intents/{id}", get(retrieve_intent))
            .route("/v1/refunds", post(create_refund).get(list_refunds))
            .route("/v1/refunds/{id}", get(retrieve_refund))
            .route("/v1/balance_transactions", get(list_balance_transactions))
            .with_state(sb.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        StripeSandbox { base, sb }
    }

    /// Where webhook events go (Stripe's dashboard setting, here the test's).
    pub(crate) fn set_endpoint(&self, url: String) {
        *self.sb.endpoint.lock().unwrap() = Some(url);
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.sb.seen.lock().unwrap().clone()
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.sb.deliveries.lock().unwrap().clone()
    }

    /// The session opened for `order_no`.
    pub(crate) fn session(&self, order_no: &str) -> Value {
        self.sb
            .session_of(order_no)
            .expect("a session for the order")
    }

    fn update_session(&self, order_no: &str, f: impl FnOnce(&mut Value)) -> Value {
        let mut sessions = self.sb.sessions.lock().unwrap();
        let s = sessions
            .values_mut()
            .find(|s| s["client_reference_id"] == order_no)
            .expect("a session for the order");
        f(s);
        s.clone()
    }

    fn new_intent(&self, session: &Value, status: &str, amount: i64, currency: &str) -> String {
        let id = new_id("pi");
        let metadata = self
            .sb
            .intent_metadata
            .lock()
            .unwrap()
            .get(session["id"].as_str().unwrap())
            .cloned()
            .unwrap_or(json!({}));
        let received = if status == "succeeded" { amount } else { 0 };
        self.sb.intents.lock().unwrap().insert(
            id.clone(),
            json!({
                "id": id, "object": "payment_intent", "amount": amount, "amount_received": received,
                "currency": currency, "status": status, "metadata": metadata,
                "latest_charge": new_id("ch"), "created": now_secs(), "livemode": false,
            }),
        );
        id
    }

    /// The buyer pays by card: the PaymentIntent succeeds and the session completes
    /// paid. `amount` / `currency` bend what was charged. Returns the PaymentIntent id.
    pub(crate) fn pay(
        &self,
        order_no: &str,
        amount: Option<i64>,
        currency: Option<&str>,
    ) -> String {
        let s = self.session(order_no);
        let amount = amount.unwrap_or_else(|| s["amount_total"].as_i64().unwrap());
        let currency = currency
            .unwrap_or_else(|| s["currency"].as_str().unwrap())
            .to_string();
        let pi = self.new_intent(&s, "succeeded", amount, &currency);
        self.update_session(order_no, |s| {
            s["status"] = json!("complete");
            s["payment_status"] = json!("paid");
            s["payment_intent"] = json!(pi);
            s["amount_total"] = json!(amount);
            s["currency"] = json!(currency);
        });
        pi
    }

    /// The buyer pays with a delayed method: the session completes unpaid and the
    /// PaymentIntent is processing until [`settle`](Self::settle).
    pub(crate) fn pay_async(&self, order_no: &str) -> String {
        let s = self.session(order_no);
        let pi = self.new_intent(
            &s,
            "processing",
            s["amount_total"].as_i64().unwrap(),
            s["currency"].as_str().unwrap(),
        );
        self.update_session(order_no, |s| {
            s["status"] = json!("complete");
            s["payment_intent"] = json!(pi);
        });
        pi
    }

    /// The delayed payment settles: succeeded (session paid) or failed.
    pub(crate) fn settle(&self, order_no: &str, succeeded: bool) {
        let s = self.update_session(order_no, |s| {
            if succeeded {
                s["payment_status"] = json!("paid");
            }
        });
        let mut intents = self.sb.intents.lock().unwrap();
        let pi = intents
            .get_mut(s["payment_intent"].as_str().unwrap())
            .unwrap();
        if succeeded {
            pi["status"] = json!("succeeded");
            pi["amount_received"] = pi["amount"].clone();
        } else {
            pi["status"] = json!("requires_payment_method");
            pi["last_payment_error"] =
                json!({"type": "card_error", "code": "debit_not_authorized"});
        }
    }

    pub(crate) fn intent(&self, id: &str) -> Value {
        self.sb
            .intents
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .expect("intent")
    }

    /// A signed-ready event body for `object` (its state now) and its id.
    pub(crate) fn event(&self, kind: &str, object: Value) -> (String, String) {
        self.sb.event(kind, object)
    }

    /// An event about the order's session as it is now.
    pub(crate) fn session_event(&self, order_no: &str, kind: &str) -> (String, String) {
        self.event(kind, self.session(order_no))
    }

    /// An event about the order's PaymentIntent as it is now.
    pub(crate) fn intent_event(&self, order_no: &str, kind: &str) -> (String, String) {
        let pi = self.session(order_no)["payment_intent"]
            .as_str()
            .unwrap()
            .to_string();
        self.event(kind, self.intent(&pi))
    }

    /// Delivers an event body, signed now, retrying until a 2xx. Returns the last status.
    pub(crate) async fn deliver(&self, body: &str) -> u16 {
        self.sb.deliver(body.to_string()).await
    }

    /// Builds and delivers an event about the session.
    pub(crate) async fn send_session(&self, order_no: &str, kind: &str) -> u16 {
        let (_, body) = self.session_event(order_no, kind);
        self.deliver(&body).await
    }

    /// The buyer disputes the order's payment (or the dispute moves to `status`).
    pub(crate) async fn dispute(&self, order_no: &str, kind: &str, status: &str) -> u16 {
        let s = self.session(order_no);
        let pi = self.intent(s["payment_intent"].as_str().unwrap());
        let d = {
            let mut disputes = self.sb.disputes.lock().unwrap();
            let d = disputes.entry(order_no.to_string()).or_insert_with(|| {
                json!({
                    "id": new_id("dp"), "object": "dispute", "amount": pi["amount_received"],
                    "currency": pi["currency"], "charge": pi["latest_charge"],
                    "payment_intent": pi["id"], "reason": "fraudulent", "created": now_secs(),
                    "livemode": false,
                })
            });
            d["status"] = json!(status);
            d.clone()
        };
        let (_, body) = self.event(kind, d);
        self.deliver(&body).await
    }

    /// `Stripe-Signature` for `body` at `t` with `secret`.
    pub(crate) fn signature(&self, secret: &str, t: i64, body: &str) -> String {
        webhook::signature_header(secret, t, body.as_bytes())
    }
}

impl Sandbox {
    fn session_of(&self, order_no: &str) -> Option<Value> {
        self.sessions
            .lock()
            .unwrap()
            .values()
            .find(|s| s["client_reference_id"] == order_no)
            .cloned()
    }

    fn event(&self, kind: &str, object: Value) -> (String, String) {
        let id = new_id("evt");
        let body = json!({
            "id": id, "object": "event", "api_version": payd::config::STRIPE_API_VERSION,
            "created": now_secs(), "data": {"object": object}, "livemode": false,
            "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}, "type": kind,
        });
        (id, serde_json::to_string_pretty(&body).unwrap())
    }

    async fn deliver(&self, body: String) -> u16 {
        let Some(url) = self.endpoint.lock().unwrap().clone() else {
            return 0;
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        // Stripe retries for days; compressed here and cut short.
        let mut last = 0;
        for delay_ms in [0u64, 100, 200, 400, 800] {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let header = webhook::signature_header(WEBHOOK_SECRET, now_secs(), body.as_bytes());
            last = match self
                .client
                .post(&url)
                .header("content-type", "application/json; charset=utf-8")
                .header("stripe-signature", header)
                .body(body.clone())
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            self.deliveries.lock().unwrap().push(Delivery {
                event_id: v["id"].as_str().unwrap_or_default().to_string(),
                kind: v["type"].as_str().unwrap_or_default().to_string(),
                status: last,
            });
            if (200..300).contains(&last) {
                break;
            }
        }
        last
    }

    fn spawn_event(self: &Arc<Self>, kind: &str, object: Value) {
        let (_, body) = self.event(kind, object);
        let sb = self.clone();
        tokio::spawn(async move {
            sb.deliver(body).await;
        });
    }

    /// The checks every request passes first: the key, then the API version.
    fn gate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(Params, Option<String>), Answer> {
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let mut params: BTreeMap<String, String> = BTreeMap::new();
        if let Some(q) = uri.query() {
            params.extend(form::decode(q));
        }
        params.extend(form::decode(std::str::from_utf8(body).unwrap_or("")));
        let auth = h("authorization");
        let authorized = auth.as_deref() == Some(&format!("Bearer {SECRET_KEY}"));
        let version = h("stripe-version");
        let key = h("idempotency-key");
        self.seen.lock().unwrap().push(Seen {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            authorized,
            stripe_version: version.clone(),
            idempotency_key: key.clone(),
            params: params.clone(),
            replayed: false,
        });
        if !authorized {
            let message = match auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
                None => "You did not provide an API key. Provide it as a Bearer token.".to_string(),
                Some(k) => format!(
                    "Invalid API Key provided: {}****{}",
                    &k[..k.len().min(8)],
                    &k[k.len().saturating_sub(4)..]
                ),
            };
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                &message,
            ));
        }
        if version.as_deref().is_none_or(str::is_empty) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "this sandbox requires a pinned Stripe-Version header",
            ));
        }
        Ok((params, key))
    }

    /// A POST: gated, then answered once per idempotency key.
    fn post(
        self: &Arc<Self>,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        op: impl FnOnce(&Arc<Sandbox>, &BTreeMap<String, String>) -> (StatusCode, Value),
    ) -> Response {
        let (params, key) = match self.gate(method, uri, headers, body) {
            Ok(p) => p,
            Err(e) => return respond(e, false),
        };
        let fingerprint = format!("{method} {} {params:?}", uri.path());
        if let Some(k) = &key {
            let stored = self.idempotency.lock().unwrap().get(k).cloned();
            if let Some(a) = stored {
                if a.fingerprint != fingerprint {
                    return respond(
                        error(
                            StatusCode::BAD_REQUEST,
                            "idempotency_error",
                            None,
                            &format!(
                                "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request."
                            ),
                        ),
                        false,
                    );
                }
                if let Some(s) = self.seen.lock().unwrap().last_mut() {
                    s.replayed = true;
                }
                return respond((a.status, a.body), true);
            }
        }
        let answer = op(self, &params);
        if let Some(k) = key {
            self.idempotency.lock().unwrap().insert(
                k,
                StoredAnswer {
                    fingerprint,
                    status: answer.0,
                    body: answer.1.clone(),
                },
            );
        }
        respond(answer, false)
    }

    fn missing(kind: &str, id: &str) -> (StatusCode, Value) {
        error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such {kind}: '{id}'"),
        )
    }
}

fn int(params: &BTreeMap<String, String>, k: &str) -> Option<i64> {
    params.get(k).and_then(|v| v.parse().ok())
}

async fn create_session(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sb.clone().post(&method, &uri, &headers, &body, |sb, p| {
        let bad = |param: &str, message: &str| {
            let (s, mut v) = error(StatusCode::BAD_REQUEST, "invalid_request_error", Some("parameter_invalid"), message);
            v["error"]["param"] = json!(param);
            (s, v)
        };
        if p.get("mode").map(String::as_str) != Some("payment") {
            return bad("mode", "mode must be payment here");
        }
        let li = "line_items[0]";
        let currency = p.get(&format!("{li}[price_data][currency]")).cloned().unwrap_or_default();
        let unit = int(p, &format!("{li}[price_data][unit_amount]")).unwrap_or(0);
        let quantity = int(p, &format!("{li}[quantity]")).unwrap_or(0);
        let name = p.get(&format!("{li}[price_data][product_data][name]")).cloned().unwrap_or_default();
        if currency.len() != 3 || currency != currency.to_ascii_lowercase() {
            return bad("line_items[0][price_data][currency]", "Invalid currency");
        }
        if unit <= 0 || quantity <= 0 || name.is_empty() {
            return bad("line_items[0]", "Each line item needs a positive unit_amount, a quantity and a product name");
        }
        for url in ["success_url", "cancel_url"] {
            if !p.get(url).is_some_and(|u| u.starts_with("http")) {
                return bad(url, "Not a valid URL");
            }
        }
        let now = now_secs();
        let expires_at = match p.get("expires_at") {
            None => now + 86_400,
            Some(v) => match v.parse::<i64>() {
                Ok(t) if t >= now + 1800 && t <= now + 86_400 => t,
                _ => return bad("expires_at", "The `expires_at` timestamp must be between 30 minutes and 24 hours from the Checkout Session's creation"),
            },
        };
        let id = new_id("cs");
        let session = json!({
            "id": id, "object": "checkout.session", "mode": "payment",
            "url": format!("{}/c/pay/{id}", sb.base),
            "status": "open", "payment_status": "unpaid", "payment_intent": null,
            "amount_subtotal": unit * quantity, "amount_total": unit * quantity, "currency": currency,
            "client_reference_id": p.get("client_reference_id"), "metadata": nested(p, "metadata"),
            "expires_at": expires_at, "created": now, "livemode": false,
            "success_url": p["success_url"], "cancel_url": p["cancel_url"],
        });
        sb.intent_metadata
            .lock()
            .unwrap()
            .insert(id.clone(), nested(p, "payment_intent_data[metadata]"));
        sb.sessions.lock().unwrap().insert(id, session.clone());
        (StatusCode::OK, session)
    })
}

async fn retrieve_session(
    State(sb): State<Arc<Sandbox>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = sb.gate(&method, &uri, &headers, b"") {
        return respond(e, false);
    }
    let s = sb.sessions.lock().unwrap().get(&id).cloned();
    respond(
        s.map_or_else(
            || Sandbox::missing("checkout.session", &id),
            |s| (StatusCode::OK, s),
        ),
        false,
    )
}

async fn expire_session(
    State(sb): State<Arc<Sandbox>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sb.clone().post(&method, &uri, &headers, &body, |sb, _| {
        let order_no = sb
            .sessions
            .lock()
            .unwrap()
            .get(&id)
            .and_then(|s| s["client_reference_id"].as_str().map(str::to_string));
        if let Some(no) = order_no.filter(|no| sb.pay_on_expire.lock().unwrap().contains(no)) {
            // The buyer's card payment lands a moment before the expiry.
            let view = StripeSandbox {
                base: sb.base.clone(),
                sb: sb.clone(),
            };
            view.pay(&no, None, None);
        }
        let mut sessions = sb.sessions.lock().unwrap();
        let Some(s) = sessions.get_mut(&id) else {
            return Sandbox::missing("checkout.session", &id);
        };
        if s["status"] != "open" {
            let message = format!(
                "Only Checkout Sessions with status open can be expired; this one is {}",
                s["status"]
            );
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                &message,
            );
        }
        s["status"] = json!("expired");
        let s = s.clone();
        drop(sessions);
        sb.spawn_event("checkout.session.expired", s.clone());
        (StatusCode::OK, s)
    })
}

async fn retrieve_intent(
    State(sb): State<Arc<Sandbox>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = sb.gate(&method, &uri, &headers, b"") {
        return respond(e, false);
    }
    let pi = sb.intents.lock().unwrap().get(&id).cloned();
    respond(
        pi.map_or_else(
            || Sandbox::missing("payment_intent", &id),
            |p| (StatusCode::OK, p),
        ),
        false,
    )
}

fn refunded(sb: &Sandbox, pi: &str) -> i64 {
    sb.refunds
        .lock()
        .unwrap()
        .iter()
        .filter(|r| {
            r["payment_intent"] == pi && r["status"] != "failed" && r["status"] != "canceled"
        })
        .map(|r| r["amount"].as_i64().unwrap_or(0))
        .sum()
}

async fn create_refund(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sb.clone().post(&method, &uri, &headers, &body, |sb, p| {
        let Some(pi_id) = p.get("payment_intent").cloned() else {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", Some("parameter_missing"), "Missing required param: payment_intent.");
        };
        let Some(pi) = sb.intents.lock().unwrap().get(&pi_id).cloned() else {
            return Sandbox::missing("payment_intent", &pi_id);
        };
        if pi["status"] != "succeeded" {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", None, "This PaymentIntent has no successful charge to refund.");
        }
        let captured = pi["amount_received"].as_i64().unwrap_or(0);
        let remaining = captured - refunded(sb, &pi_id);
        if remaining <= 0 {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", Some("charge_already_refunded"), "This charge has already been refunded.");
        }
        let amount = int(p, "amount").unwrap_or(remaining);
        if amount <= 0 || amount > remaining {
            return error(StatusCode::BAD_REQUEST, "invalid_request_error", Some("amount_too_large"),
                &format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"));
        }
        let refund = json!({
            "id": new_id("re"), "object": "refund", "amount": amount, "currency": pi["currency"],
            "payment_intent": pi_id, "charge": pi["latest_charge"], "status": "pending",
            "metadata": nested(p, "metadata"), "created": now_secs(), "reason": null,
        });
        sb.refunds.lock().unwrap().push(refund.clone());
        // The refund succeeds shortly after, and Stripe says so twice.
        let sb2 = sb.clone();
        let id = refund["id"].as_str().unwrap().to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let done = {
                let mut refunds = sb2.refunds.lock().unwrap();
                let r = refunds.iter_mut().find(|r| r["id"] == id.as_str()).unwrap();
                r["status"] = json!("succeeded");
                r.clone()
            };
            let total = refunded(&sb2, done["payment_intent"].as_str().unwrap());
            let charge = json!({
                "id": done["charge"], "object": "charge", "payment_intent": done["payment_intent"],
                "amount": captured, "amount_captured": captured, "amount_refunded": total,
                "refunded": total >= captured, "currency": done["currency"], "metadata": {},
            });
            let (_, updated) = sb2.event("refund.updated", done);
            sb2.deliver(updated).await;
            let (_, refunded_event) = sb2.event("charge.refunded", charge);
            sb2.deliver(refunded_event).await;
        });
        (StatusCode::OK, refund)
    })
}

async fn retrieve_refund(
    State(sb): State<Arc<Sandbox>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = sb.gate(&method, &uri, &headers, b"") {
        return respond(e, false);
    }
    let r = sb
        .refunds
        .lock()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .cloned();
    respond(
        r.map_or_else(|| Sandbox::missing("refund", &id), |r| (StatusCode::OK, r)),
        false,
    )
}

async fn list_refunds(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (params, _) = match sb.gate(&method, &uri, &headers, b"") {
        Ok(p) => p,
        Err(e) => return respond(e, false),
    };
    let limit = int(&params, "limit").unwrap_or(10).clamp(1, 100) as usize;
    // Newest first, as Stripe lists.
    let mut all: Vec<Value> = sb
        .refunds
        .lock()
        .unwrap()
        .iter()
        .rev()
        .filter(|r| {
            params
                .get("payment_intent")
                .is_none_or(|pi| r["payment_intent"] == pi.as_str())
        })
        .cloned()
        .collect();
    if let Some(after) = params.get("starting_after") {
        match all.iter().position(|r| r["id"] == after.as_str()) {
            Some(i) => {
                all.drain(..=i);
            }
            None => return respond(Sandbox::missing("refund", after), false),
        }
    }
    let has_more = all.len() > limit;
    all.truncate(limit);
    respond(
        (
            StatusCode::OK,
            json!({"object": "list", "url": "/v1/refunds", "has_more": has_more, "data": all}),
        ),
        false,
    )
}

// ---- balance transactions ----

/// Stripe's card fee in the sandbox: 2.9 % + 30.
fn card_fee(amount: i64) -> i64 {
    (amount * 29 + 500) / 1000 + 30
}

impl Sandbox {
    /// Every balance transaction, newest first: one per succeeded charge and one per
    /// succeeded refund, with their sources expanded when asked.
    fn balance_transactions(&self, expand: bool) -> Vec<Value> {
        let hide = self.balance_hide.lock().unwrap().clone();
        let mut all = Vec::new();
        for pi in self.intents.lock().unwrap().values() {
            let received = pi["amount_received"].as_i64().unwrap_or(0);
            let id = pi["id"].as_str().unwrap();
            if pi["status"] != "succeeded" || received == 0 || hide.iter().any(|h| h == id) {
                continue;
            }
            let charge = json!({"id": pi["latest_charge"], "object": "charge", "amount": received,
                "currency": pi["currency"], "payment_intent": id, "metadata": pi["metadata"],
                "created": pi["created"], "paid": true, "status": "succeeded"});
            let fee = card_fee(received);
            all.push(
                json!({"id": format!("txn_{}", &id[3..]), "object": "balance_transaction",
                "amount": received, "currency": pi["currency"], "created": pi["created"],
                "fee": fee, "net": received - fee, "status": "available", "type": "charge",
                "reporting_category": "charge",
                "source": if expand { charge } else { pi["latest_charge"].clone() }}),
            );
        }
        for r in self.refunds.lock().unwrap().iter() {
            if r["status"] != "succeeded" {
                continue;
            }
            let amount = r["amount"].as_i64().unwrap_or(0);
            all.push(
                json!({"id": format!("txn_{}", &r["id"].as_str().unwrap()[3..]),
                "object": "balance_transaction", "amount": -amount, "currency": r["currency"],
                "created": r["created"], "fee": 0, "net": -amount, "status": "available",
                "type": "refund", "reporting_category": "refund",
                "source": if expand { r.clone() } else { r["id"].clone() }}),
            );
        }
        all.sort_by(|a, b| {
            b["created"]
                .as_i64()
                .cmp(&a["created"].as_i64())
                .then(b["id"].as_str().cmp(&a["id"].as_str()))
        });
        all
    }
}

async fn list_balance_transactions(
    State(sb): State<Arc<Sandbox>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (params, _) = match sb.gate(&method, &uri, &headers, b"") {
        Ok(p) => p,
        Err(e) => return respond(e, false),
    };
    let max = *sb.balance_page_max.lock().unwrap();
    let limit = (int(&params, "limit").unwrap_or(10).clamp(1, 100) as usize).min(max);
    let expand = params.get("expand[]").is_some_and(|e| e == "data.source");
    let gte = int(&params, "created[gte]").unwrap_or(i64::MIN);
    let lt = int(&params, "created[lt]").unwrap_or(i64::MAX);
    let mut all: Vec<Value> = sb
        .balance_transactions(expand)
        .into_iter()
        .filter(|t| (gte..lt).contains(&t["created"].as_i64().unwrap()))
        .collect();
    if let Some(after) = params.get("starting_after") {
        match all.iter().position(|t| t["id"] == after.as_str()) {
            Some(i) => {
                all.drain(..=i);
            }
            None => return respond(Sandbox::missing("balance_transaction", after), false),
        }
    }
    let has_more = all.len() > limit;
    all.truncate(limit);
    respond(
        (
            StatusCode::OK,
            json!({"object": "list", "url": "/v1/balance_transactions", "has_more": has_more, "data": all}),
        ),
        false,
    )
}

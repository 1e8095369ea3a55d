//! `GET /api-docs/openapi.json`: the OpenAPI 3.1 description of API.md.
//!
//! Built in code from one table ([`OPERATIONS`]) and a set of JSON Schemas, rather
//! than with utoipa's derive macros: those would need an annotation on every handler
//! and view, spread over files that other people own, and a second copy of each
//! route's path beside the router anyway. Two tests keep this document honest
//! instead (`tests/e2e/buyer.rs`): every route the router serves is documented and
//! every documented route is served (methods read off the running router), and the
//! JSON the server really sends has exactly the properties these schemas declare.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::http::AppState;

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone.
    Public,
    /// A user's bearer JWT.
    User,
    /// A JWT with `role: "admin"`.
    Admin,
    /// A payment provider; verified by its own signature, not a JWT.
    Provider,
}

/// What a successful call returns.
#[derive(Clone, Copy)]
pub enum Reply {
    /// `application/json` of a schema in `components.schemas`.
    Json(u16, &'static str),
    /// Another media type, described in words.
    Media(u16, &'static str, &'static str),
    /// Switching protocols (WebSocket).
    Upgrade,
}

/// An `Idempotency-Key` header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    None,
    Optional,
    Required,
}

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub auth: Auth,
    /// (name, JSON type, description).
    pub query: &'static [(&'static str, &'static str, &'static str)],
    /// Request body schema in `components.schemas`.
    pub body: Option<&'static str>,
    pub idempotency: Idempotency,
    pub reply: Reply,
    /// Problem responses beyond those the auth kind implies.
    pub errors: &'static [u16],
}

const PAGE: [(&str, &str, &str); 2] = [
    ("page", "integer", "page number, from 1"),
    ("page_size", "integer", "items per page, 1-100 (default 20)"),
];

macro_rules! op {
    ($method:literal $path:literal, $tag:literal, $summary:literal, $auth:ident,
     query: $query:expr, body: $body:expr, idem: $idem:ident, reply: $reply:expr,
     errors: $errors:expr) => {
        Operation {
            method: $method,
            path: $path,
            tag: $tag,
            summary: $summary,
            auth: Auth::$auth,
            query: $query,
            body: $body,
            idempotency: Idempotency::$idem,
            reply: $reply,
            errors: $errors,
        }
    };
}

/// Every route payd serves, as API.md describes it.
pub const OPERATIONS: &[Operation] = &[
    // Operations
    op!("GET" "/healthz", "operations", "Liveness: the process answers", Public,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Health"), errors: &[]),
    op!("GET" "/readyz", "operations", "Readiness: storage open, actors running, providers configured", Public,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Readiness"), errors: &[503]),
    op!("GET" "/api-docs/openapi.json", "operations", "This document", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "application/json", "OpenAPI 3.1 document"), errors: &[]),
    op!("GET" "/metrics", "operations",
        "Prometheus metrics (here unless server.metrics_bind moves them to their own listener)", Public,
        query: &[], body: None, idem: None,
        reply: Reply::Media(200, "text/plain", "Prometheus text exposition format"), errors: &[404]),
    // Checkout page
    op!("GET" "/", "checkout page", "The checkout page (HTML)", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/html", "the page"), errors: &[]),
    op!("GET" "/assets/app.js", "checkout page", "The checkout page's script", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/javascript", "script"), errors: &[]),
    op!("GET" "/assets/app.css", "checkout page", "The checkout page's stylesheet", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/css", "stylesheet"), errors: &[]),
    op!("GET" "/payment/return", "checkout page",
        "Where Alipay page pay and Stripe Checkout send the buyer back: the order's real status", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/html", "a page naming the order's stored status"), errors: &[400]),
    // Packages and methods
    op!("GET" "/api/v1/packages", "packages", "Packages on sale, by sort_order", Public,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "PackageList"), errors: &[]),
    op!("GET" "/api/v1/packages/{id}", "packages", "One package on sale", Public,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Package"), errors: &[404]),
    op!("GET" "/api/v1/payment-methods", "packages",
        "Payment methods usable now, with their provider, currencies and flow (QR or redirect)", Public,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "PaymentMethodList"), errors: &[]),
    // Orders
    op!("POST" "/api/v1/orders", "orders", "Create an order", User,
        query: &[], body: Some("CreateOrder"), idem: Optional, reply: Reply::Json(201, "Order"),
        errors: &[400, 409, 413, 422, 429, 502, 503]),
    op!("GET" "/api/v1/orders", "orders", "The caller's orders, newest first", User,
        query: &[("status", "string", "only orders in this status"), PAGE[0], PAGE[1]],
        body: None, idem: None, reply: Reply::Json(200, "OrderPage"), errors: &[422]),
    op!("GET" "/api/v1/orders/{order_no}", "orders", "One of the caller's orders", User,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Order"), errors: &[404]),
    op!("POST" "/api/v1/orders/{order_no}/cancel", "orders", "Cancel a pending order", User,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Order"), errors: &[404, 409, 503]),
    op!("POST" "/api/v1/orders/{order_no}/qr", "orders",
        "Re-issue the QR code for the same provider trade, extended (never past expire_at)", User,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Order"), errors: &[404, 409, 502, 503]),
    op!("GET" "/api/v1/orders/{order_no}/qr.svg", "orders",
        "The order's current QR code as SVG; cacheable privately until the QR code expires", User,
        query: &[], body: None, idem: None,
        reply: Reply::Media(200, "image/svg+xml", "the QR code; Cache-Control: private, max-age=<seconds until qr_code_expire_at>"),
        errors: &[404, 409]),
    // Entitlements
    op!("GET" "/api/v1/me/entitlements", "entitlements", "The caller's membership and points", User,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Entitlements"), errors: &[]),
    op!("GET" "/api/v1/me/entitlements/history", "entitlements", "Every change to the caller's entitlements", User,
        query: &PAGE, body: None, idem: None, reply: Reply::Json(200, "EntitlementHistoryPage"), errors: &[422]),
    op!("POST" "/api/v1/me/entitlements/consume", "entitlements",
        "Spend queries and/or points (bonus points first)", User,
        query: &[], body: Some("Consume"), idem: Required, reply: Reply::Json(200, "Entitlements"),
        errors: &[400, 409, 422]),
    // Live updates
    op!("POST" "/api/v1/ws/ticket", "live updates", "A single-use ticket (60 s) for opening the WebSocket", User,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "WsTicket"), errors: &[503]),
    op!("GET" "/api/v1/ws", "live updates",
        "The WebSocket: pushes LiveMessage for the ticket owner's orders; send {\"type\":\"subscribe\",\"order_no\"} for an order's current status", Public,
        query: &[("ticket", "string", "from POST /api/v1/ws/ticket; single use")],
        body: None, idem: None, reply: Reply::Upgrade, errors: &[400, 401, 403]),
    // Admin
    op!("GET" "/api/v1/admin/orders", "admin", "All orders, filtered", Admin,
        query: &[("status", "string", "order status"), ("user_id", "string", "owner"),
            ("payment_method", "string", "payment method"), ("from", "string", "created at or after (RFC 3339)"),
            ("to", "string", "created before (RFC 3339)"), PAGE[0], PAGE[1]],
        body: None, idem: None, reply: Reply::Json(200, "OrderPage"), errors: &[422]),
    op!("GET" "/api/v1/admin/orders/{order_no}", "admin",
        "An order with its timeline, payments, anomalies and refunds", Admin,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "AdminOrder"), errors: &[404]),
    op!("POST" "/api/v1/admin/orders/{order_no}/cancel", "admin", "Cancel an order (audited)", Admin,
        query: &[], body: Some("Reason"), idem: None, reply: Reply::Json(200, "Order"), errors: &[404, 409, 422]),
    op!("POST" "/api/v1/admin/orders/{order_no}/complete", "admin",
        "Force-complete an order: paid and granted once (audited)", Admin,
        query: &[], body: Some("Reason"), idem: None, reply: Reply::Json(200, "Order"), errors: &[404, 409, 422]),
    op!("POST" "/api/v1/admin/orders/{order_no}/refunds", "admin",
        "Refund an order (default: everything refundable)", Admin,
        query: &[], body: Some("CreateRefund"), idem: Optional, reply: Reply::Json(201, "Refund"),
        errors: &[404, 409, 422, 502, 503]),
    op!("GET" "/api/v1/admin/orders/{order_no}/refunds", "admin", "An order's refunds", Admin,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "RefundList"), errors: &[404]),
    op!("GET" "/api/v1/admin/anomalies", "admin", "Anomalies (amount mismatches, double and late payments, …)", Admin,
        query: &[("status", "string", "open or resolved"), PAGE[0], PAGE[1]],
        body: None, idem: None, reply: Reply::Json(200, "AnyPage"), errors: &[422]),
    op!("POST" "/api/v1/admin/anomalies/{id}/resolve", "admin", "Resolve an anomaly by refund, complete or dismiss", Admin,
        query: &[], body: Some("ResolveAnomaly"), idem: None, reply: Reply::Json(200, "Anomaly"),
        errors: &[404, 409, 422]),
    op!("GET" "/api/v1/admin/audit", "admin", "The operators' audit log, newest first", Admin,
        query: &PAGE, body: None, idem: None, reply: Reply::Json(200, "AnyPage"), errors: &[422]),
    op!("GET" "/api/v1/admin/orders/statistics", "admin",
        "Totals and amounts by status and by method, success and refund rates, a per-day series", Admin,
        query: &[("days", "integer", "window in days (default 30)")],
        body: None, idem: None, reply: Reply::Json(200, "Statistics"), errors: &[422]),
    op!("POST" "/api/v1/admin/packages", "admin", "Add a package", Admin,
        query: &[], body: Some("PackageInput"), idem: None, reply: Reply::Json(201, "Package"),
        errors: &[409, 422]),
    op!("PUT" "/api/v1/admin/packages/{id}", "admin",
        "Change a package (deactivate with is_active: false; orders keep their snapshot)", Admin,
        query: &[], body: Some("PackageInput"), idem: None, reply: Reply::Json(200, "Package"),
        errors: &[404, 422]),
    op!("POST" "/api/v1/admin/users/{user_id}/membership/extend", "admin",
        "Extend a user's membership by some days (audited)", Admin,
        query: &[], body: Some("ExtendMembership"), idem: None, reply: Reply::Json(200, "Entitlements"),
        errors: &[409, 422]),
    op!("POST" "/api/v1/admin/users/{user_id}/points/adjust", "admin",
        "Add or remove a user's points (audited)", Admin,
        query: &[], body: Some("AdjustPoints"), idem: None, reply: Reply::Json(200, "Entitlements"),
        errors: &[409, 422]),
    op!("GET" "/api/v1/admin/notifications", "admin", "The provider callback log", Admin,
        query: &[("provider", "string", "wechat_v3, wechat_v2, alipay, stripe, or wechat for both"),
            ("status", "string", "processed, duplicate or logged"), PAGE[0], PAGE[1]],
        body: None, idem: None, reply: Reply::Json(200, "AnyPage"), errors: &[422]),
    op!("GET" "/api/v1/admin/notifications/statistics", "admin", "Callback counts by provider and outcome", Admin,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "AnyObject"), errors: &[]),
    op!("POST" "/api/v1/admin/notifications/{id}/retry", "admin", "Process a logged callback again (audited)", Admin,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "AnyObject"), errors: &[404, 409, 422, 502]),
    op!("GET" "/api/v1/admin/webhooks", "admin", "Outbound events to the host application and their delivery state", Admin,
        query: &[("status", "string", "pending, delivered, dead or all"), PAGE[0], PAGE[1]],
        body: None, idem: None, reply: Reply::Json(200, "AnyPage"), errors: &[422]),
    op!("POST" "/api/v1/admin/webhooks/{id}/resend", "admin", "Deliver an outbound event again (audited)", Admin,
        query: &[], body: None, idem: None, reply: Reply::Json(202, "AnyObject"), errors: &[404, 409]),
    op!("POST" "/api/v1/admin/backup", "admin", "Write a consistent backup file while payd keeps serving", Admin,
        query: &[], body: Some("Backup"), idem: None, reply: Reply::Json(201, "AnyObject"), errors: &[409, 422, 503]),
    op!("POST" "/api/v1/admin/reconciliations", "admin",
        "Reconcile a provider's statement of a day now (idempotent per day; audited)", Admin,
        query: &[], body: Some("ReconciliationRun"), idem: None, reply: Reply::Json(200, "Reconciliation"),
        errors: &[422, 502, 503]),
    op!("GET" "/api/v1/admin/reconciliations", "admin", "Stored reconciliation days, newest first (summaries)", Admin,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "AnyObject"), errors: &[]),
    op!("GET" "/api/v1/admin/reconciliations/{provider}/{date}", "admin",
        "One reconciled day with every discrepancy and its evidence; CSV with format=csv or Accept: text/csv", Admin,
        query: &[("format", "string", "json (default) or csv")],
        body: None, idem: None, reply: Reply::Json(200, "Reconciliation"), errors: &[404, 422]),
    op!("POST" "/api/v1/admin/reconciliations/{provider}/{date}/discrepancies/{index}/resolve", "admin",
        "Settle a reported discrepancy with a reason (audited; later runs of the day keep it settled)", Admin,
        query: &[], body: Some("Reason"), idem: None, reply: Reply::Json(200, "Reconciliation"), errors: &[404, 409, 422]),
    op!("GET" "/api/v1/admin/monitor/status", "admin", "Health, rates and active alerts", Admin,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "AnyObject"), errors: &[]),
    op!("GET" "/api/v1/admin/monitor/alerts", "admin", "Alert history, newest first", Admin,
        query: &PAGE, body: None, idem: None, reply: Reply::Json(200, "AnyPage"), errors: &[422]),
    // Mock provider
    op!("POST" "/api/v1/mock/orders/{order_no}/pay", "mock provider",
        "Simulate the provider confirming payment, through the callback path (mock mode only)", User,
        query: &[("notify", "boolean", "false: mark the mock trade paid without a callback"),
            ("amount", "integer", "simulate a different amount (minor units)"),
            ("currency", "string", "simulate a different currency"),
            ("transaction_id", "string", "simulate another payment")],
        body: None, idem: None, reply: Reply::Json(200, "Order"), errors: &[404, 409, 422]),
    op!("POST" "/api/v1/mock/orders/{order_no}/fail", "mock provider", "Simulate a failed payment (mock mode only)", User,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "Order"), errors: &[404, 409]),
    op!("POST" "/api/v1/mock/demo-token", "mock provider", "A short-lived token for a fresh demo user (mock mode only)", Public,
        query: &[], body: None, idem: None, reply: Reply::Json(200, "DemoToken"), errors: &[404]),
    op!("GET" "/mock/pay/{order_no}", "mock provider", "The mock cashier page that mock QR codes point to", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/html", "the cashier page"), errors: &[404]),
    op!("POST" "/mock/pay/{order_no}/pay", "mock provider", "The mock cashier's Pay button", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/html", "the result page"), errors: &[404, 409]),
    op!("POST" "/mock/pay/{order_no}/fail", "mock provider", "The mock cashier's Fail button", Public,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/html", "the result page"), errors: &[404, 409]),
    // Provider callbacks
    op!("POST" "/api/v1/notify/wechat", "provider callbacks", "WeChat Pay payment notification (v3 JSON or v2 XML)", Provider,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "application/json", "v3: 204 No Content; v2: XML return_code SUCCESS"), errors: &[]),
    op!("POST" "/api/v1/notify/wechat/refund", "provider callbacks", "WeChat Pay refund notification", Provider,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "application/json", "v3: 204 No Content; v2: XML return_code SUCCESS"), errors: &[]),
    op!("POST" "/api/v1/notify/alipay", "provider callbacks", "Alipay payment and refund notification", Provider,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "text/plain", "success"), errors: &[]),
    op!("POST" "/api/v1/notify/stripe", "provider callbacks", "Stripe webhook event", Provider,
        query: &[], body: None, idem: None, reply: Reply::Media(200, "application/json", "{\"received\":true}"), errors: &[]),
];

fn problem(status: u16) -> (String, Value) {
    let text = match status {
        400 => "bad request (malformed JSON, not a WebSocket handshake)",
        401 => "missing, bad or expired token (or ticket)",
        403 => "not allowed (admin role, WebSocket origin)",
        404 => "not found (or not yours)",
        409 => "conflict with the order's state or a key in use",
        413 => "payload too large",
        422 => "validation failed",
        429 => "rate limited (Retry-After)",
        502 => "the payment provider failed",
        503 => "unavailable (payments disabled, storage, order busy)",
        _ => "error",
    };
    (
        status.to_string(),
        json!({"description": text, "content": {"application/problem+json":
            {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
    )
}

fn operation(op: &Operation) -> Value {
    let mut parameters = Vec::new();
    for segment in op.path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            parameters.push(json!({"name": name, "in": "path", "required": true,
                "schema": {"type": "string"}}));
        }
    }
    for (name, kind, description) in op.query {
        parameters.push(json!({"name": name, "in": "query", "required": false,
            "description": description, "schema": {"type": kind}}));
    }
    if op.idempotency != Idempotency::None {
        parameters.push(json!({"name": "Idempotency-Key", "in": "header",
            "required": op.idempotency == Idempotency::Required,
            "description": "1-255 visible ASCII; the same key and body within 24 h replays the first answer",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255}}));
    }
    let mut responses = Map::new();
    match op.reply {
        Reply::Json(status, schema) => {
            responses.insert(
                status.to_string(),
                json!({"description": "success", "content": {"application/json":
                    {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
            );
        }
        Reply::Media(status, media, description) => {
            responses.insert(
                status.to_string(),
                json!({"description": description, "content": {media: {"schema": {"type": "string"}}}}),
            );
        }
        Reply::Upgrade => {
            responses.insert(
                "101".into(),
                json!({"description": "switching to WebSocket; server messages are LiveMessage",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/LiveMessage"}}}}),
            );
        }
    }
    let implied: &[u16] = match op.auth {
        Auth::Public | Auth::Provider => &[],
        Auth::User => &[401],
        Auth::Admin => &[401, 403],
    };
    for status in implied.iter().chain(op.errors) {
        let (k, v) = problem(*status);
        responses.insert(k, v);
    }
    let mut value = json!({
        "tags": [op.tag],
        "summary": op.summary,
        "operationId": operation_id(op),
        "parameters": parameters,
        "responses": responses,
    });
    match op.auth {
        Auth::User | Auth::Admin => value["security"] = json!([{"bearer": []}]),
        Auth::Public | Auth::Provider => value["security"] = json!([]),
    }
    if let Some(body) = op.body {
        value["requestBody"] = json!({"required": true, "content": {"application/json":
            {"schema": {"$ref": format!("#/components/schemas/{body}")}}}});
    }
    value
}

fn operation_id(op: &Operation) -> String {
    let mut id = op.method.to_ascii_lowercase();
    for part in op.path.split(['/', '.', '-', '{', '}']) {
        if !part.is_empty() && part != "api" && part != "v1" {
            id.push('_');
            id.push_str(part);
        }
    }
    id
}

/// The whole document.
pub fn document(base_url: &str) -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let item = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        item[op.method.to_ascii_lowercase()] = operation(op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "payd",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Payment engine: packages, orders, entitlements, live updates. \
                Amounts are integers in minor units; times are RFC 3339 UTC; errors are \
                RFC 9457 problem+json with a stable `code`.",
        },
        "servers": [{"url": base_url}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": schemas(),
        },
    })
}

fn string() -> Value {
    json!({"type": "string"})
}
fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}
fn integer() -> Value {
    json!({"type": "integer"})
}
fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}
fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}
fn page_of(item: Value) -> Value {
    object(
        &["items", "page", "page_size", "total"],
        json!({"items": {"type": "array", "items": item}, "page": integer(),
            "page_size": integer(), "total": integer()}),
    )
}

const STATUSES: [&str; 7] = [
    "pending",
    "paid",
    "partially_refunded",
    "refunded",
    "cancelled",
    "expired",
    "failed",
];
const METHODS: [&str; 5] = [
    "wechat_native",
    "alipay_qr",
    "alipay_page",
    "stripe_checkout",
    "mock",
];

fn schemas() -> Value {
    let package_fields = json!({
        "id": string(), "kind": {"type": "string", "enum": ["membership", "points"]},
        "name": string(), "description": string(),
        "amount": {"type": "integer", "description": "minor units"}, "currency": string(),
        "membership_type": string(), "validity_days": integer(), "queries_count": integer(),
        "points": integer(), "bonus_points": integer(),
        "is_active": {"type": "boolean"}, "sort_order": integer(),
    });
    let mut all = json!({
        "Problem": object(&["type", "title", "status", "detail", "code"], json!({
            "type": string(), "title": string(), "status": integer(), "detail": string(),
            "code": {"type": "string", "description": "stable snake_case error code"}})),
        "Health": object(&["status"], json!({"status": string()})),
        "Readiness": object(&["status", "storage", "actors"], json!({
            "status": string(), "storage": string(), "actors": string(),
            "mock_mode": {"type": "boolean"}, "payments_enabled": {"type": "boolean"},
            "providers": {"type": "array", "items": string()}})),
        "Package": object(&["id", "kind", "name", "description", "amount", "currency", "is_active", "sort_order"],
            package_fields),
        "PackageList": object(&["items"], json!({"items": {"type": "array", "items": reference("Package")}})),
        "PackageSnapshot": object(&["name", "kind"], json!({
            "name": string(), "kind": {"type": "string", "enum": ["membership", "points"]},
            "membership_type": string(), "validity_days": integer(), "queries_count": integer(),
            "points": integer(), "bonus_points": integer()})),
        "PaymentMethod": object(&["method", "provider", "currencies", "flow"], json!({
            "method": {"type": "string", "enum": METHODS},
            "provider": {"type": "string", "enum": ["mock", "wechat_v3", "wechat_v2", "alipay", "stripe"]},
            "currencies": {"type": "array", "items": string(),
                "description": "currencies of the packages on sale that this method takes"},
            "flow": {"type": "string", "enum": ["qr", "redirect"]}})),
        "PaymentMethodList": object(&["items", "mock_mode", "payments_enabled"], json!({
            "items": {"type": "array", "items": reference("PaymentMethod")},
            "mock_mode": {"type": "boolean"}, "payments_enabled": {"type": "boolean"}})),
        "CreateOrder": {
            "type": "object", "required": ["package_id", "payment_method"], "additionalProperties": false,
            "properties": {"package_id": string(),
                "payment_method": {"type": "string", "description":
                    "wechat_native, alipay_qr, alipay_page, stripe_checkout or mock; aliases wechat, alipay, stripe"},
                "client_ip": string(), "is_upgrade": {"type": "boolean"}}},
        "Order": object(&["order_no", "user_id", "package_id", "package", "amount", "currency",
            "payment_method", "provider", "status", "expire_at", "created_at", "refunded_amount", "late_payment"],
            json!({
                "order_no": string(), "user_id": string(), "package_id": string(),
                "package": reference("PackageSnapshot"),
                "amount": {"type": "integer", "description": "minor units"}, "currency": string(),
                "payment_method": {"type": "string", "enum": METHODS}, "provider": string(),
                "status": {"type": "string", "enum": STATUSES},
                "qr_code_url": string(), "qr_code_expire_at": time(), "payment_url": string(),
                "expire_at": time(), "created_at": time(), "paid_at": time(), "cancelled_at": time(),
                "settled_at": time(),
                "provider_transaction_id": string(), "refunded_amount": integer(),
                "failure_reason": string(), "late_payment": {"type": "boolean"}})),
        "OrderPage": page_of(reference("Order")),
        "AdminOrder": {"allOf": [reference("Order"), {"type": "object", "properties": {
            "timeline": {"type": "array", "items": {"type": "object"}},
            "payments": {"type": "array", "items": {"type": "object"}},
            "anomalies": {"type": "array", "items": reference("Anomaly")},
            "refunds": {"type": "array", "items": reference("Refund")},
            "force_completed": {"type": "boolean"}}}]},
        "Reason": {"type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {"reason": string()}},
        "CreateRefund": {"type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {"amount": integer(), "reason": string()}},
        "Refund": object(&["refund_no", "order_no", "amount", "reason", "status", "created_at"], json!({
            "refund_no": string(), "order_no": string(), "amount": integer(), "currency": string(),
            "reason": string(), "status": {"type": "string", "enum": ["processing", "succeeded", "failed"]},
            "provider_refund_id": string(), "transaction_id": string(), "failure_reason": string(),
            "created_at": time(), "finished_at": time()})),
        "RefundList": object(&["items"], json!({"items": {"type": "array", "items": reference("Refund")}})),
        "Anomaly": {"type": "object", "properties": {"id": string(), "order_no": string(),
            "kind": string(), "status": {"type": "string", "enum": ["open", "resolved"]}}},
        "ResolveAnomaly": {"type": "object", "required": ["action", "reason"], "additionalProperties": false,
            "properties": {"action": {"type": "string", "enum": ["refund", "complete", "dismiss"]},
                "reason": string()}},
        "AnyPage": page_of(json!({"type": "object"})),
        "AnyObject": {"type": "object"},
        "Backup": {"type": "object", "required": ["dest"], "additionalProperties": false,
            "properties": {"dest": {"type": "string", "description": "absolute path of the backup file to write"}}},
        "Statistics": {"type": "object", "description":
            "totals and amounts by status and by method, success rate, refund rate, per-day series"},
        "PackageInput": {"type": "object", "additionalProperties": false,
            "description": "the fields of Package; on PUT, those given replace the stored ones",
            "properties": {"id": string(), "kind": {"type": "string", "enum": ["membership", "points"]},
                "name": string(), "description": string(), "amount": integer(), "currency": string(),
                "membership_type": string(), "validity_days": integer(), "queries_count": integer(),
                "points": integer(), "bonus_points": integer(), "is_active": {"type": "boolean"},
                "sort_order": integer()}},
        "ExtendMembership": {"type": "object", "required": ["days", "reason"], "additionalProperties": false,
            "properties": {"days": integer(), "reason": string()}},
        "AdjustPoints": {"type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {"points": integer(), "bonus_points": integer(), "reason": string()}},
        "Membership": object(&["type", "expires_at", "queries_remaining"], json!({
            "type": string(), "expires_at": time(), "queries_remaining": integer()})),
        "Entitlements": object(&["membership", "points"], json!({
            "membership": {"oneOf": [reference("Membership"), {"type": "null"}]},
            "points": {"type": "integer", "description": "paid plus bonus"},
            "paid_points": integer(), "bonus_points": integer()})),
        "EntitlementHistoryPage": page_of(json!({"type": "object", "required": ["at", "change", "reason"],
            "properties": {"at": time(), "change": string(), "order_no": string(), "refund_no": string(),
                "reason": string(), "membership": {"type": "object"}, "points": integer(),
                "bonus_points": integer(), "queries": integer()}})),
        "Consume": {"type": "object", "additionalProperties": false,
            "properties": {"queries": integer(), "points": integer()}},
        "WsTicket": object(&["ticket", "expires_at"], json!({"ticket": string(), "expires_at": time()})),
        "DemoToken": object(&["token", "user_id", "expires_at"], json!({
            "token": string(), "user_id": string(), "expires_at": time()})),
        "LiveMessage": {"oneOf": [
            object(&["type", "order_no", "status", "at"], json!({
                "type": {"const": "order_status"}, "order_no": string(),
                "status": {"type": "string", "enum": STATUSES}, "at": time()})),
            object(&["type", "order_no", "amount", "at"], json!({
                "type": {"const": "payment_success"}, "order_no": string(), "amount": integer(), "at": time()})),
            object(&["type", "code"], json!({"type": {"const": "error"}, "code": string(),
                "order_no": string(), "detail": string()})),
        ]},
    });
    // Added apart: one json! literal this long exceeds the macro recursion limit.
    let reconciliation = json!({
        "ReconciliationRun": {"type": "object", "required": ["provider", "date"], "additionalProperties": false,
            "properties": {"provider": {"type": "string", "description": "wechat_v3, wechat_v2, alipay or stripe (wechat: whichever is configured)"},
                "date": {"type": "string", "description": "YYYY-MM-DD: a Beijing day for WeChat and Alipay, a UTC day for Stripe"}}},
        "Reconciliation": {"type": "object", "description":
            "provider, date, status (completed|failed), failure, runs, statement_rows, totals per category and currency, fees per currency (thousandths of a minor unit), unresolved, and discrepancies (kind, resolution, order_no, transaction_id, refund_no, currency, statement_amount, payd_amount, outcome, evidence)"}
    });
    if let (Some(all), Some(more)) = (all.as_object_mut(), reconciliation.as_object()) {
        all.extend(more.clone());
    }
    all
}

pub(super) async fn serve(State(state): State<AppState>) -> Response {
    let mut response = Json(document(&state.config.server.base_url)).into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_unique_and_refers_to_known_schemas() {
        let doc = document("http://127.0.0.1:3007");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut seen = std::collections::HashSet::new();
        for op in OPERATIONS {
            assert!(
                seen.insert((op.method, op.path)),
                "{} {} twice",
                op.method,
                op.path
            );
        }
        let text = doc.to_string();
        for (i, _) in text.match_indices("#/components/schemas/") {
            let rest = &text[i + "#/components/schemas/".len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "no schema {name}");
        }
    }
}

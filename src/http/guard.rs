//! What stands in front of every route: the client's address, rate limits, the
//! callback source allowlists, security headers, CORS, the access log and the HTTP
//! metrics.
//!
//! One middleware ([`front`]) does it all in a fixed order, so no handler can forget
//! a step: find the client (the socket's peer, or `X-Forwarded-For` when — and only
//! when — the peer is a trusted proxy), refuse a callback from outside its
//! provider's allowlist before a byte of it is parsed, draw on the client's token
//! bucket for the route's class, run the handler, then add the security headers,
//! count the request and write one access-log line (`info` when refused, failed or
//! slow, `debug` otherwise). It runs inside the router, so
//! the route is the matched template (`/api/v1/orders/{order_no}`), never the raw
//! path with an order number in it.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument;

use crate::config::Config;
use crate::http::AppState;
use crate::http::error::ApiError;
use crate::metrics;
use crate::providers::rejections::Rejected;
use crate::ratelimit::{Decision, RateLimiter, RouteClass};

/// The client's address as payd believes it (see the module docs). Handlers can
/// take it as `Extension<ClientIp>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// An address block: an IP with a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `"10.0.0.0/8"`, `"::1"`, … (what the config already validated).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, len.parse::<u8>().ok()?),
            None => {
                let ip = s.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let ip = ip.to_canonical();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr {
            network: ip,
            prefix,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn cidrs(list: &[String]) -> Vec<Cidr> {
    list.iter().filter_map(|s| Cidr::parse(s)).collect()
}

/// Event ids of callbacks remembered per provider.
const RECENT_EVENTS: usize = 4096;
/// Longer ids are not remembered (no provider's are this long).
const MAX_EVENT_ID: usize = 256;

/// Recent callback event ids per provider whose processing is durable, so a
/// provider's retry of one is answered before it reaches storage or an actor.
/// Bounded: the oldest id is forgotten first.
#[derive(Default)]
pub struct RecentCallbacks {
    inner: Mutex<BTreeMap<&'static str, RecentIds>>,
}

/// The ids remembered for one provider, and their order of arrival.
type RecentIds = (HashSet<String>, VecDeque<String>);

impl RecentCallbacks {
    /// Whether `event_id` from `provider` was processed durably not long ago.
    pub fn seen(&self, provider: &'static str, event_id: &str) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .get(provider)
            .is_some_and(|(set, _)| set.contains(event_id))
    }

    /// Remembers an event id whose effect is durable. Call only after that.
    pub fn remember(&self, provider: &'static str, event_id: &str) {
        if event_id.is_empty() || event_id.len() > MAX_EVENT_ID {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = inner.entry(provider).or_default();
        if set.insert(event_id.to_string()) {
            order.push_back(event_id.to_string());
            while order.len() > RECENT_EVENTS {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    pub fn len(&self, provider: &str) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.get(provider).map_or(0, |(set, _)| set.len())
    }
}

/// The front door's state: limits, proxies, allowlists and the callback cache.
pub struct Protection {
    pub limiter: RateLimiter,
    trusted_proxies: Vec<Cidr>,
    /// Provider (`wechat`, `alipay`, `stripe`) → where its callbacks may come from.
    allowed: BTreeMap<String, Vec<Cidr>>,
    pub callbacks: RecentCallbacks,
}

impl Protection {
    pub fn new(config: &Config) -> Protection {
        let r = &config.rate_limit;
        Protection {
            limiter: RateLimiter::new(
                r.payment_per_minute,
                r.read_per_minute,
                r.callback_per_minute,
                crate::ratelimit::DEFAULT_MAX_BUCKETS,
            ),
            trusted_proxies: cidrs(&config.server.trusted_proxies),
            allowed: config
                .notify
                .allowed_ips
                .iter()
                .map(|(p, list)| (p.clone(), cidrs(list)))
                .collect(),
            callbacks: RecentCallbacks::default(),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The client: the peer, unless the peer is a trusted proxy; then the nearest
    /// address in `X-Forwarded-For` that is not itself a trusted proxy (read right
    /// to left, since each proxy appends the address it saw).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                // A garbled entry: believe nothing to its left.
                break;
            };
            client = ip.to_canonical();
            if !self.trusted(client) {
                break;
            }
        }
        client
    }

    /// Whether `provider`'s callbacks may come from `ip`.
    pub fn callback_allowed(&self, provider: &str, ip: IpAddr) -> bool {
        match self.allowed.get(provider) {
            Some(list) => list.iter().any(|c| c.contains(ip)),
            None => true,
        }
    }
}

/// The callback-metrics label of a provider of record (both WeChat APIs are `wechat`).
pub fn callback_label(kind: payd_actors::model::ProviderKind) -> &'static str {
    use payd_actors::model::ProviderKind;
    match kind {
        ProviderKind::WechatV3 | ProviderKind::WechatV2 => "wechat",
        ProviderKind::Alipay => "alipay",
        ProviderKind::Stripe => "stripe",
        ProviderKind::Mock => "mock",
    }
}

/// Sweeps idle rate-limit buckets every half minute, for as long as payd runs.
pub fn spawn_sweeper(protection: std::sync::Arc<Protection>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let evicted = protection.limiter.evict_idle();
            if evicted > 0 {
                tracing::debug!(evicted, "idle rate-limit buckets evicted");
            }
        }
    })
}

/// The allowance a route draws on; `None` for operations routes.
pub fn route_class(route: &str, method: &Method) -> Option<RouteClass> {
    match route {
        "/healthz" | "/readyz" | "/metrics" => None,
        "/api/v1/orders" | "/api/v1/orders/{order_no}/qr" if method == Method::POST => {
            Some(RouteClass::Payment)
        }
        r if r.starts_with("/api/v1/notify/") => Some(RouteClass::Callback),
        _ => Some(RouteClass::Read),
    }
}

/// The provider a callback route belongs to.
pub fn callback_provider(route: &str) -> Option<&'static str> {
    let rest = route.strip_prefix("/api/v1/notify/")?;
    metrics::CALLBACK_PROVIDERS
        .into_iter()
        .find(|p| rest == *p || rest.starts_with(&format!("{p}/")))
}

fn rate_limited(retry_after: std::time::Duration) -> Response {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests from this address; retry in {seconds} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// A request slower than this is logged at `info` whatever its status.
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_millis(500);

/// The middleware in front of every route (see the module docs).
pub async fn front(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().clone();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let client = state.protection.client_ip(peer, req.headers());
    req.extensions_mut().insert(ClientIp(client));
    let class = route_class(&route, &method);
    let provider = callback_provider(&route);

    let mut refused = None;
    if let Some(provider) = provider {
        metrics::callback_received(provider);
        if !state.protection.callback_allowed(provider, client) {
            state.rejections.record(Rejected {
                provider,
                reason: metrics::SOURCE_NOT_ALLOWED,
                source_ip: Some(client.to_string()),
                at: state.clock.now(),
            });
            refused = Some((StatusCode::FORBIDDEN, "source not allowed").into_response());
        }
    }
    if refused.is_none()
        && let Some(class) = class
        && let Decision::Limited { retry_after } = state.protection.limiter.check(client, class)
    {
        metrics::rate_limited(class.as_str());
        tracing::warn!(client = %client, class = class.as_str(), route = %route, "rate limited");
        refused = Some(rate_limited(retry_after));
    }
    // Everything the handler logs names the client.
    let span = tracing::info_span!("client", ip = %client);
    let mut response = match refused {
        Some(r) => r,
        None => next.run(req).instrument(span).await,
    };
    let status = response.status();
    if let Some(provider) = provider
        && status.is_success()
    {
        metrics::callback_verified(provider);
    }
    secure(response.headers_mut(), route.starts_with("/api/"));
    let elapsed = started.elapsed();
    metrics::http_request(
        &route,
        metrics::method_label(&method),
        status.as_u16(),
        elapsed,
    );
    // Every request is counted in the metrics; the access log names at `info` the
    // ones someone may have to look into — refused, failed or slow — and the rest
    // at `debug` (`RUST_LOG=payd::access=debug`). A line for each request was a
    // twentieth of the CPU of a request.
    let elapsed_ms = elapsed.as_millis() as u64;
    if status.is_client_error() || status.is_server_error() || elapsed >= SLOW_REQUEST {
        tracing::info!(target: "payd::access", client = %client, method = %method, route = %route,
            status = status.as_u16(), elapsed_ms, "request");
    } else {
        tracing::debug!(target: "payd::access", client = %client, method = %method, route = %route,
            status = status.as_u16(), elapsed_ms, "request");
    }
    response
}

/// Security headers every response carries unless its handler set its own (the
/// checkout page sets a richer policy).
fn secure(headers: &mut HeaderMap, api: bool) {
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let csp = if html {
        // Server-rendered pages (mock cashier, payment return): inline styles, no
        // script at all, forms only to this origin.
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    } else {
        "default-src 'none'; frame-ancestors 'none'"
    };
    let defaults: [(HeaderName, &'static str); 4] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, csp),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if api && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// CORS for `server.cors_origins`; `None` (no CORS headers at all, so browsers
/// keep other origins out) when the list is empty.
pub fn cors(config: &Config) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = config
        .server
        .cors_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                HeaderName::from_static("idempotent-replayed"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protection(trusted: &[&str]) -> Protection {
        Protection {
            limiter: RateLimiter::new(20, 600, 6000, 1000),
            trusted_proxies: trusted.iter().filter_map(|s| Cidr::parse(s)).collect(),
            allowed: BTreeMap::from([(
                "wechat".to_string(),
                vec![Cidr::parse("101.226.103.0/25").unwrap()],
            )]),
            callbacks: RecentCallbacks::default(),
        }
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_their_block_only() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped IPv6");
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let p = protection(&["10.0.0.0/8"]);
        // From the proxy: the client it names.
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), &xff("203.0.113.7")),
            ip("203.0.113.7")
        );
        // From anyone else: the header is ignored.
        assert_eq!(
            p.client_ip(ip("198.51.100.1"), &xff("203.0.113.7")),
            ip("198.51.100.1")
        );
        // A chain of proxies: the nearest untrusted hop, not a spoofed leftmost one.
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), &xff("1.2.3.4, 203.0.113.7, 10.0.0.9")),
            ip("203.0.113.7")
        );
        // Garbage in the header: nothing to its left is believed.
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), &xff("1.2.3.4, junk")),
            ip("10.0.0.2")
        );
        // No header: the proxy itself.
        assert_eq!(
            p.client_ip(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
        // No trusted proxies configured: never believed.
        let none = protection(&[]);
        assert_eq!(
            none.client_ip(ip("10.0.0.2"), &xff("203.0.113.7")),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn routes_fall_into_classes_and_callbacks_name_their_provider() {
        assert_eq!(
            route_class("/api/v1/orders", &Method::POST),
            Some(RouteClass::Payment)
        );
        assert_eq!(
            route_class("/api/v1/orders", &Method::GET),
            Some(RouteClass::Read)
        );
        assert_eq!(
            route_class("/api/v1/orders/{order_no}/qr", &Method::POST),
            Some(RouteClass::Payment)
        );
        assert_eq!(route_class("/metrics", &Method::GET), None);
        assert_eq!(
            route_class("/api/v1/notify/wechat/refund", &Method::POST),
            Some(RouteClass::Callback)
        );
        assert_eq!(
            callback_provider("/api/v1/notify/wechat/refund"),
            Some("wechat")
        );
        assert_eq!(callback_provider("/api/v1/notify/stripe"), Some("stripe"));
        assert_eq!(callback_provider("/api/v1/orders"), None);
    }

    #[test]
    fn allowlists_apply_to_their_provider_only() {
        let p = protection(&[]);
        assert!(p.callback_allowed("wechat", ip("101.226.103.10")));
        assert!(!p.callback_allowed("wechat", ip("101.226.103.200")));
        assert!(p.callback_allowed("stripe", ip("192.0.2.1")));
    }

    #[test]
    fn the_recent_callback_cache_is_bounded_per_provider() {
        let c = RecentCallbacks::default();
        for i in 0..(RECENT_EVENTS + 10) {
            c.remember("stripe", &format!("evt_{i}"));
        }
        assert_eq!(c.len("stripe"), RECENT_EVENTS);
        assert!(!c.seen("stripe", "evt_0"));
        assert!(c.seen("stripe", &format!("evt_{}", RECENT_EVENTS + 9)));
        assert!(!c.seen("wechat", &format!("evt_{}", RECENT_EVENTS + 9)));
    }
}

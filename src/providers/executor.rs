//! The one way provider adapters reach the network.
//!
//! Owns what every provider call needs and no adapter should write again: a timeout
//! per attempt, retries with backoff for transient failures only (connection errors,
//! timeouts, 5xx — never a 4xx, which the same request would get again), a limit on
//! concurrent calls and a circuit breaker per provider, and logs that name the
//! operation, status and latency but never a header or a body (they carry
//! signatures, keys and buyers' data).
//!
//! A request is *built* per attempt by the adapter's closure, so protocols whose
//! signature covers a timestamp and nonce (WeChat) sign each attempt afresh.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use payd_actors::provider::ProviderError;
use reqwest::Method;
use tokio::sync::Semaphore;

/// One outbound request, as an adapter builds it.
pub struct OutboundRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
}

/// What came back: the status, the headers adapters need for verification, and the
/// raw body bytes (signatures are checked over them, before any parsing).
#[derive(Debug)]
pub struct InboundResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl InboundResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub timeout: Duration,
    pub max_concurrency: usize,
    /// Attempts after the first, for transient failures.
    pub retries: u32,
    pub backoff: Duration,
    /// Consecutive failures that open the breaker, and how long it stays open.
    pub breaker_threshold: u32,
    pub breaker_open_for: Duration,
}

impl ExecutorConfig {
    pub fn new(timeout: Duration, max_concurrency: usize) -> Self {
        ExecutorConfig {
            timeout,
            max_concurrency: max_concurrency.max(1),
            retries: 2,
            backoff: Duration::from_millis(200),
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

pub struct Executor {
    provider: &'static str,
    client: reqwest::Client,
    limit: Semaphore,
    breaker: Mutex<Breaker>,
    config: ExecutorConfig,
}

impl Executor {
    pub fn new(provider: &'static str, client: reqwest::Client, config: ExecutorConfig) -> Self {
        Executor {
            provider,
            client,
            limit: Semaphore::new(config.max_concurrency),
            breaker: Mutex::new(Breaker::default()),
            config,
        }
    }

    /// A client with the defaults payd uses for providers (rustls, no redirects).
    pub fn default_client() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("payd/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    }

    pub fn is_open(&self) -> bool {
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        b.open_until.is_some_and(|t| Instant::now() < t)
    }

    /// Sends the request `build` makes, retrying transient failures. A response with
    /// any status is returned as is (adapters map 4xx bodies to their meaning); only
    /// transport failures and 5xx after the last retry become errors.
    pub async fn send(
        &self,
        op: &'static str,
        build: impl Fn() -> Result<OutboundRequest, ProviderError>,
    ) -> Result<InboundResponse, ProviderError> {
        if self.is_open() {
            return Err(ProviderError::transient(format!(
                "{} circuit breaker is open after repeated failures",
                self.provider
            )));
        }
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| ProviderError::transient("executor closed"))?;
        let mut attempt = 0;
        loop {
            let request = build()?;
            let started = Instant::now();
            let outcome = self.attempt(request).await;
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_millis() as u64;
            let transient = match &outcome {
                Ok(r) => r.status >= 500,
                Err(e) => e.transient,
            };
            crate::monitor::provider_call(self.provider, op, !transient, elapsed);
            match &outcome {
                Ok(r) => tracing::debug!(
                    provider = self.provider,
                    op,
                    status = r.status,
                    elapsed_ms,
                    attempt,
                    "provider call"
                ),
                Err(e) => {
                    tracing::warn!(provider = self.provider, op, error = %e, elapsed_ms, attempt, "provider call failed")
                }
            }
            self.record(!transient);
            if !transient || attempt >= self.config.retries {
                return match outcome {
                    Ok(r) if r.status >= 500 => Err(ProviderError::transient(format!(
                        "{} answered HTTP {}",
                        self.provider, r.status
                    ))),
                    other => other,
                };
            }
            attempt += 1;
            tokio::time::sleep(self.config.backoff * 2u32.pow(attempt - 1)).await;
        }
    }

    async fn attempt(&self, r: OutboundRequest) -> Result<InboundResponse, ProviderError> {
        let mut req = self
            .client
            .request(r.method, &r.url)
            .timeout(self.config.timeout);
        for (k, v) in r.headers {
            req = req.header(k, v);
        }
        if let Some(body) = r.body {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's Display may include the URL, never headers or the body.
            ProviderError::transient(format!(
                "{} unreachable: {}",
                self.provider,
                e.without_url()
            ))
        })?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| {
                ProviderError::transient(format!("{} body: {}", self.provider, e.without_url()))
            })?
            .to_vec();
        Ok(InboundResponse {
            status,
            headers,
            body,
        })
    }

    fn record(&self, ok: bool) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            b.consecutive_failures = 0;
            if b.open_until.take().is_some() {
                tracing::info!(provider = self.provider, "provider circuit breaker closed");
                crate::monitor::breaker(self.provider, false);
            }
        } else {
            b.consecutive_failures += 1;
            if b.consecutive_failures >= self.config.breaker_threshold {
                if b.open_until.is_none_or(|t| Instant::now() >= t) {
                    tracing::error!(
                        provider = self.provider,
                        failures = b.consecutive_failures,
                        "provider circuit breaker opened"
                    );
                    crate::monitor::breaker(self.provider, true);
                }
                b.open_until = Some(Instant::now() + self.config.breaker_open_for);
            }
        }
    }
}

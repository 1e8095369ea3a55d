//! The load generator: N workers, each with one kept-alive HTTP/1.1 connection
//! (hyper's client connection, nothing pooled or shared), issuing requests back to
//! back for a fixed time (or until a count or a queue runs out). Every completed
//! operation's latency is kept in microseconds, so percentiles are exact.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// One kept-alive connection to a server.
pub(crate) struct Conn {
    addr: SocketAddr,
    tx: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { addr, tx })
    }

    /// Sends one request and reads the whole answer. `headers` are added as given.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        if self.tx.is_closed() {
            *self = Conn::open(self.addr).await?;
        }
        self.tx.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let has_body = body.is_some();
        if has_body {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.tx.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

/// One GET without a kept connection (readiness polls, one-off calls).
pub(crate) async fn get_once(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut conn = Conn::open(addr).await?;
    conn.send(Method::GET, path, &[], None).await
}

/// What one operation does; called over and over by every worker.
pub(crate) trait Work: Send + Sync + 'static {
    /// Runs one operation (it may take several requests). `Ok(false)`: no more work
    /// for this worker (a queue ran dry).
    fn step(
        &self,
        conn: &mut Conn,
        worker: usize,
        seq: u64,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;
}

/// How long to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) connections: usize,
    /// Run this long before latencies count.
    pub(crate) warmup: Duration,
    /// Then measure this long (`None`: until `limit` operations or the work runs out).
    pub(crate) duration: Option<Duration>,
    /// Stop after this many operations in all (warm-up included).
    pub(crate) limit: Option<u64>,
    /// Also measure this process's CPU time over the measured window (and the load
    /// generator's own): the CPU an operation costs, which a busy shared host
    /// disturbs far less than throughput. Only with a `duration`.
    pub(crate) cpu_of: Option<u32>,
}

/// The outcome of one run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Latencies of the operations completed in the measured window, µs, sorted.
    pub(crate) latencies_us: Vec<u32>,
    /// The measured window's length (until the last completion when the work ran out).
    pub(crate) window: Duration,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// CPU time (user + system) over the measured window: the server's, the load
    /// generator's (see [`Plan::cpu_of`]).
    pub(crate) cpu: Option<(Duration, Duration)>,
}

impl Outcome {
    pub(crate) fn ops(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// CPU microseconds per completed operation: the server's, the load generator's.
    pub(crate) fn cpu_us_per_op(&self) -> Option<(f64, f64)> {
        let (server, client) = self.cpu?;
        let ops = self.ops().max(1) as f64;
        Some((
            server.as_secs_f64() * 1e6 / ops,
            client.as_secs_f64() * 1e6 / ops,
        ))
    }

    pub(crate) fn per_second(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            self.ops() as f64 / secs
        }
    }

    /// The q-quantile (0..=1) in milliseconds.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
        f64::from(self.latencies_us[rank]) / 1000.0
    }
}

#[derive(Default)]
struct WorkerOut {
    latencies_us: Vec<u32>,
    last_done: Option<Instant>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `work` on `plan.connections` connections to `addr`.
pub(crate) async fn run<W: Work>(
    addr: SocketAddr,
    work: Arc<W>,
    plan: Plan,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let end = plan.duration.map(|d| measure_from + d);
    let issued = Arc::new(AtomicU64::new(0));
    let cpu = match (plan.cpu_of, end) {
        (Some(pid), Some(end)) => Some(tokio::spawn(async move {
            let both = || -> anyhow::Result<(Duration, Duration)> {
                Ok((cpu_time(pid)?, cpu_time(std::process::id())?))
            };
            tokio::time::sleep_until(measure_from.into()).await;
            let (s0, c0) = both()?;
            tokio::time::sleep_until(end.into()).await;
            let (s1, c1) = both()?;
            anyhow::Ok((s1.saturating_sub(s0), c1.saturating_sub(c0)))
        })),
        _ => None,
    };
    let mut tasks = Vec::with_capacity(plan.connections);
    for worker in 0..plan.connections {
        let work = work.clone();
        let issued = issued.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = WorkerOut::default();
            let mut conn = match Conn::open(addr).await {
                Ok(c) => c,
                Err(e) => {
                    out.errors += 1;
                    out.first_error = Some(format!("{e:#}"));
                    return out;
                }
            };
            loop {
                let seq = issued.fetch_add(1, Ordering::Relaxed);
                if plan.limit.is_some_and(|l| seq >= l) {
                    break;
                }
                let t0 = Instant::now();
                if end.is_some_and(|e| t0 >= e) {
                    break;
                }
                match work.step(&mut conn, worker, seq).await {
                    Ok(true) => {
                        let done = Instant::now();
                        if t0 >= measure_from && end.is_none_or(|e| done <= e) {
                            let us = done.duration_since(t0).as_micros();
                            out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                            out.last_done = Some(done);
                        }
                    }
                    Ok(false) => break,
                    Err(e) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(format!("{e:#}"));
                        }
                        if out.errors > 1000 {
                            break;
                        }
                        // A broken connection is replaced before the next request.
                        if let Ok(c) = Conn::open(addr).await {
                            conn = c;
                        }
                    }
                }
            }
            out
        }));
    }
    let mut outcome = Outcome::default();
    let mut last_done = measure_from;
    for t in tasks {
        let w = t.await.context("a load worker panicked")?;
        outcome.latencies_us.extend(w.latencies_us);
        outcome.errors += w.errors;
        if outcome.first_error.is_none() {
            outcome.first_error = w.first_error;
        }
        if let Some(d) = w.last_done {
            last_done = last_done.max(d);
        }
    }
    outcome.latencies_us.sort_unstable();
    if let Some(cpu) = cpu {
        outcome.cpu = Some(cpu.await.context("the CPU sampler panicked")??);
    }
    outcome.window = match end {
        Some(e) => e.duration_since(measure_from),
        None => last_done.duration_since(measure_from),
    };
    Ok(outcome)
}

/// Bearer tokens for `users` distinct users (orders spread over them).
pub(crate) struct Users {
    pub(crate) tokens: Vec<String>,
}

impl Users {
    pub(crate) fn token(&self, i: usize) -> &str {
        &self.tokens[i % self.tokens.len()]
    }

    pub(crate) fn auth(&self, i: usize) -> String {
        format!("Bearer {}", self.token(i))
    }
}

/// Orders created during a run: (user index, order number), for reads and callbacks.
pub(crate) type Created = Arc<Mutex<Vec<(usize, String)>>>;

/// Picks `"order_no":"…"` out of an order's JSON without parsing all of it.
pub(crate) fn order_no(body: &[u8]) -> anyhow::Result<String> {
    const KEY: &[u8] = b"\"order_no\":\"";
    let Some(at) = body.windows(KEY.len()).position(|w| w == KEY) else {
        bail!("no order_no in {}", String::from_utf8_lossy(body));
    };
    let rest = &body[at + KEY.len()..];
    let len = rest
        .iter()
        .position(|&b| b == b'"')
        .context("unterminated order_no")?;
    Ok(String::from_utf8_lossy(&rest[..len]).into_owned())
}

/// Fails unless the answer has the expected status.
pub(crate) fn expect(status: StatusCode, want: StatusCode, body: &Bytes) -> anyhow::Result<()> {
    if status != want {
        bail!(
            "expected {want}, got {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(())
}

/// User + system CPU time of process `pid`, all its threads, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let field = |n: usize| -> anyhow::Result<u64> {
        // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
        Ok(rest
            .split_whitespace()
            .nth(n - 3)
            .context("short /proc/<pid>/stat")?
            .parse()?)
    };
    // In clock ticks of USER_HZ, which Linux fixes at 100 for /proc on every
    // architecture it reports to user space.
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_millis(ticks * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_no_is_picked_out_of_an_order() {
        let body = br#"{"order_no":"PD2611222322026M72QMVBGP4HQSNE","status":"pending"}"#;
        assert_eq!(order_no(body).unwrap(), "PD2611222322026M72QMVBGP4HQSNE");
        assert!(order_no(br#"{"status":"pending"}"#).is_err());
        assert!(order_no(br#"{"order_no":"PD26"#).is_err());
    }

    #[test]
    fn rates_and_quantiles_come_from_the_measured_window() {
        let o = Outcome {
            latencies_us: (1..=100).map(|ms| ms * 1000).collect(),
            window: Duration::from_secs(2),
            ..Outcome::default()
        };
        assert_eq!(o.per_second(), 50.0);
        assert_eq!(o.quantile_ms(0.5), 51.0);
        assert_eq!(o.quantile_ms(0.99), 99.0);
        assert_eq!(o.quantile_ms(1.0), 100.0);
        assert_eq!(Outcome::default().quantile_ms(0.99), 0.0);
        assert_eq!(Outcome::default().per_second(), 0.0);
    }

    #[test]
    fn cpu_time_counts_this_process_working() {
        let before = cpu_time(std::process::id()).unwrap();
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let spent = cpu_time(std::process::id()).unwrap() - before;
        assert!(spent >= Duration::from_millis(100), "{spent:?}");
    }
}

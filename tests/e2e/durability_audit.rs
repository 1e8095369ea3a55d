//! Durability barrier audit (issue 8, item 10): payd runs under `strace -f`, the test
//! drives state-changing requests and signed callbacks (mock provider, then WeChat
//! Pay v3 through its sandbox), and the trace is checked: every 2xx reply to a
//! state-changing request and every callback acknowledgement must be preceded, after
//! that request was read, by a data write to the database journal and a completed
//! `fdatasync`/`fsync` of that same journal file. Replies are found by their bytes on
//! payd's own TCP sockets (`-yy` names them), whichever syscall sent them.
//!
//! Needs Debian's strace (`.ci/run` installs it); skipped with a message only when
//! strace is absent or cannot ptrace here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use payd::auth::Jwt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{now_secs, order_no, restrict_fixture_keys};
use crate::wechat_sandbox::*;

use crate::crash::SECRET;
const TRACED: &str = "fsync,fdatasync,sync_file_range,pwrite64,write,writev,sendto,sendmsg,\
                      read,recvfrom,readv";

/// Why strace cannot be used here, if it cannot.
fn strace_unusable() -> Option<String> {
    match Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .output()
    {
        Err(e) => Some(format!(
            "no strace on the PATH ({e}); .ci/run installs Debian's"
        )),
        Ok(o) if !o.status.success() => Some(format!(
            "strace cannot ptrace here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// payd under strace, stopped (SIGTERM to payd itself) when dropped.
struct Traced {
    strace: Child,
    trace: PathBuf,
    base: String,
}

impl Traced {
    fn start(dir: &Path, name: &str, port: u16, extra: &str) -> Traced {
        let config =
            crate::crash::child_config(dir, &format!("{name}.toml"), port, "120s", "60s", extra);
        let trace = dir.join(format!("{name}.trace"));
        let strace = Command::new("strace")
            .args(["-f", "-ttt", "-yy", "-s", "48", "-e"])
            .arg(format!("trace={TRACED}"))
            .arg("-o")
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_payd"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace starts");
        Traced {
            strace,
            trace,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// payd's pid: strace's only child.
    fn payd_pid(&self) -> Option<String> {
        let pid = self.strace.id();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next().map(str::to_string)
    }

    /// Stops payd gracefully and returns the finished trace.
    fn stop(mut self) -> String {
        self.terminate();
        std::fs::read_to_string(&self.trace).expect("trace written")
    }

    fn terminate(&mut self) {
        if let Some(pid) = self.payd_pid() {
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
        }
        for _ in 0..200 {
            if self.strace.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        if let Some(pid) = self.payd_pid() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if self.strace.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payd never became ready under strace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One traced syscall, with where its entry and its completion sit in the trace
/// (strace prints `<unfinished …>` / `<… resumed>` when threads interleave, so the
/// line order is the order of events).
#[derive(Debug, Clone)]
struct Call {
    entry: usize,
    exit: usize,
    name: String,
    /// What `-yy` printed for the first argument: a path or `TCP:[local->remote]`.
    fd: String,
    /// The first bytes of the data written or read, as strace escaped them.
    data: String,
    ok: bool,
}

fn parse(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut open: HashMap<String, (usize, String, String)> = HashMap::new();
    for (i, line) in trace.lines().enumerate() {
        // `PID TIMESTAMP call(…) = ret`; strace pads the pid with spaces.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((_ts, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let (entry, name, body) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            let Some((entry, name0, head)) = open.remove(pid) else {
                continue;
            };
            debug_assert_eq!(name, name0);
            (entry, name0, format!("{head}{tail}"))
        } else {
            let Some((name, args)) = rest.split_once('(') else {
                continue;
            };
            if let Some(head) = args.strip_suffix(" <unfinished ...>") {
                open.insert(pid.to_string(), (i, name.to_string(), head.to_string()));
                continue;
            }
            (i, name.to_string(), args.to_string())
        };
        // `11</data/0.jnl>)` or `13<TCP:[a:1->b:2]>, …`: up to the `>` that closes it.
        let fd = body
            .split_once('<')
            .and_then(|(_, r)| {
                r.match_indices('>')
                    .find(|(at, _)| matches!(r.as_bytes().get(at + 1), Some(b',' | b')')))
                    .map(|(at, _)| r[..at].to_string())
            })
            .unwrap_or_default();
        // The quoted data up to its closing quote (strace escapes quotes inside).
        let data = body
            .split_once('"')
            .map(|(_, r)| {
                let mut out = String::new();
                let mut escaped = false;
                for ch in r.chars() {
                    if ch == '"' && !escaped {
                        break;
                    }
                    escaped = ch == '\\' && !escaped;
                    out.push(ch);
                }
                out
            })
            .unwrap_or_default();
        let ok = body
            .rsplit_once(" = ")
            .map(|(_, ret)| !ret.starts_with('-') && !ret.starts_with('?'))
            .unwrap_or(false);
        calls.push(Call {
            entry,
            exit: i,
            name,
            fd,
            data,
            ok,
        });
    }
    calls
}

#[derive(Debug, Default)]
struct Audit {
    /// 2xx replies to state-changing requests (and callback acknowledgements).
    acknowledged: usize,
    covered: usize,
    /// Each acknowledgement without a covering journal write + sync.
    uncovered: Vec<String>,
    /// 2xx replies to GETs with no journal write + sync since the request: shows
    /// that the check can tell the difference (it is not vacuous).
    reads_without_sync: usize,
    syncs: usize,
    journal: String,
}

fn audit(trace: &str, port: u16) -> Audit {
    let calls = parse(trace);
    let local = format!("TCP:[127.0.0.1:{port}->");
    let is_journal = |c: &Call| c.fd.ends_with(".jnl");
    let mut out = Audit::default();
    // The request being served on each of payd's connections: (method + path, where read).
    let mut current: HashMap<String, (String, usize)> = HashMap::new();
    for c in &calls {
        if !c.fd.starts_with(&local) || !c.ok {
            continue;
        }
        let methods = ["GET ", "POST ", "PUT ", "PATCH ", "DELETE "];
        if matches!(c.name.as_str(), "read" | "recvfrom" | "readv")
            && methods.iter().any(|m| c.data.starts_with(m))
        {
            let line = c
                .data
                .split("HTTP/")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            current.insert(c.fd.clone(), (line, c.exit));
            continue;
        }
        let sent = matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg");
        let reply = c.data.trim_start_matches("[{iov_base=\"");
        if !sent || !reply.starts_with("HTTP/1.1 2") {
            continue;
        }
        let Some((request, read_at)) = current.get(&c.fd).cloned() else {
            continue;
        };
        // A journal write after the request was read, then a completed sync of that
        // journal, all before this reply was sent.
        let covered = calls.iter().any(|w| {
            matches!(w.name.as_str(), "write" | "pwrite64" | "writev")
                && is_journal(w)
                && w.ok
                && w.entry > read_at
                && calls.iter().any(|s| {
                    matches!(s.name.as_str(), "fdatasync" | "fsync")
                        && s.fd == w.fd
                        && s.ok
                        && s.entry > w.exit
                        && s.exit < c.entry
                })
        });
        if request.starts_with("GET ") {
            if !covered {
                out.reads_without_sync += 1;
            }
            continue;
        }
        out.acknowledged += 1;
        if covered {
            out.covered += 1;
        } else {
            out.uncovered
                .push(format!("{request} → {}", &reply[..reply.len().min(20)]));
        }
    }
    out.syncs = calls
        .iter()
        .filter(|s| matches!(s.name.as_str(), "fdatasync" | "fsync") && is_journal(s))
        .count();
    out.journal = calls
        .iter()
        .find(|c| is_journal(c))
        .map(|c| c.fd.clone())
        .unwrap_or_default();
    out
}

async fn send(req: reqwest::RequestBuilder, expect: StatusCode) -> Value {
    let r = req.send().await.expect("payd answers");
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, expect, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledgement_is_preceded_by_a_sync_of_the_journal_write_it_depends_on() {
    if let Some(why) = strace_unusable() {
        eprintln!("skipped: {why}");
        return;
    }
    let started = std::time::Instant::now();
    restrict_fixture_keys();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let jwt = Jwt::new(&payd::config::AuthConfig {
        jwt_secret: payd::config::Secret::new(SECRET),
        leeway: Duration::from_secs(5),
        issuer: None,
        audience: None,
    });
    let tokens: Vec<String> = (0..2)
        .map(|i| jwt.mint(&format!("audit{i}"), false, now_secs(), 3600))
        .collect();
    let mut expected = 0;

    // Phase 1: the mock provider. Two buyers at once, so group commit batches them.
    let payd = Traced::start(dir.path(), "mock", port, "");
    let base = payd.base.clone();
    wait_ready(&client, &base).await;
    let buyer = |token: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            for i in 0..10 {
                let order = send(
                    client
                        .post(format!("{base}/api/v1/orders"))
                        .bearer_auth(&token)
                        .json(&json!({"package_id": "coins_100", "payment_method": "mock"})),
                    StatusCode::CREATED,
                )
                .await;
                let no = order_no(&order);
                if i % 4 == 3 {
                    send(
                        client
                            .post(format!("{base}/api/v1/orders/{no}/cancel"))
                            .bearer_auth(&token),
                        StatusCode::OK,
                    )
                    .await;
                } else {
                    send(
                        client
                            .post(format!("{base}/api/v1/mock/orders/{no}/pay"))
                            .bearer_auth(&token),
                        StatusCode::OK,
                    )
                    .await;
                }
                // A read between writes: must not be mistaken for an acknowledgement.
                send(
                    client
                        .get(format!("{base}/api/v1/orders/{no}"))
                        .bearer_auth(&token),
                    StatusCode::OK,
                )
                .await;
            }
        }
    };
    tokio::join!(buyer(tokens[0].clone()), buyer(tokens[1].clone()));
    expected += 2 * 10 * 2;
    let mock_trace = payd.stop();
    if let Ok(keep) = std::env::var("PAYD_AUDIT_KEEP") {
        std::fs::write(keep, &mock_trace).unwrap();
    }
    let mock = audit(&mock_trace, port);

    // Phase 2: WeChat Pay v3 through its sandbox, on the same database.
    let sandbox = WechatSandbox::start().await;
    // `extra` lands in [payment]; the [wechat] table follows it.
    let extra = format!("mock_mode = false\n{}", payd_config(&sandbox));
    let payd = Traced::start(dir.path(), "wechat", port, &extra);
    wait_ready(&client, &base).await;
    for i in 0..8 {
        let token = &tokens[i % 2];
        let order = send(
            client
                .post(format!("{base}/api/v1/orders"))
                .bearer_auth(token)
                .json(&json!({"package_id": "coins_100", "payment_method": "wechat_native"})),
            StatusCode::CREATED,
        )
        .await;
        let no = order_no(&order);
        sandbox.pay(&no, None);
        // Delivered twice, as WeChat does when unsure: both acknowledged, both durable.
        for attempt in 0..2 {
            let (body, headers) = sandbox.notification_for(
                &format!("EV-{no}-{attempt}"),
                &sandbox.transaction_json(&no),
            );
            let mut req = client
                .post(format!("{base}/api/v1/notify/wechat"))
                .body(body)
                .header("content-type", "application/json");
            for (k, v) in &headers {
                req = req.header(k.as_str(), v.as_str());
            }
            send(req, StatusCode::NO_CONTENT).await;
        }
        let paid = send(
            client
                .get(format!("{base}/api/v1/orders/{no}"))
                .bearer_auth(token),
            StatusCode::OK,
        )
        .await;
        assert_eq!(paid["status"], "paid");
    }
    let wechat_expected = 8 * 3;
    let wechat = audit(&payd.stop(), port);

    for (name, a, want) in [
        ("mock", &mock, expected),
        ("wechat v3", &wechat, wechat_expected),
    ] {
        eprintln!(
            "durability audit ({name}): {} acknowledgements, {} covered by a journal sync, {} uncovered; \
             {} journal syncs; {} read replies without a sync; journal {}",
            a.acknowledged,
            a.covered,
            a.uncovered.len(),
            a.syncs,
            a.reads_without_sync,
            a.journal
        );
        assert_eq!(
            a.acknowledged, want,
            "{name}: the trace shows a different number of acknowledgements than the test received"
        );
        assert!(
            a.uncovered.is_empty(),
            "{name}: acknowledged before their write was synced: {:#?}",
            a.uncovered
        );
        assert!(
            a.reads_without_sync > 0,
            "{name}: the check saw no reply it would flag; it could not fail"
        );
    }
    eprintln!("durability audit: {:.1} s", started.elapsed().as_secs_f64());
}

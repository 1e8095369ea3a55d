//! Storage faults (issue 8, item 9): the n-th write, commit or sync fails (n = 1..50
//! for each), or a file-size limit stands in for a full disk. payd must stop
//! acknowledging (503 to clients, no success reply to WeChat's callbacks), keep
//! serving reads, fail `/readyz`, raise the alert, and after the fault clears and
//! the database is reopened have no partial state and have lost nothing it
//! acknowledged. `PAYD_FAULT_MAX_N` changes the largest n (50 by default).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use payd::auth::Jwt;
use payd_actors::model::{Entitlements, Order, OrderStatus};
use payd_actors::tables::{DEADLINES, ENTITLEMENTS, ORDERS};
use payd_storage::{FaultPoint, ReadView};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::crash::SECRET;
use crate::support::{TestApp, order_no};
use crate::wechat_sandbox::*;

/// What the clients and WeChat were told, the test's record of acknowledgements.
#[derive(Default)]
struct Ledger {
    /// Orders whose creation was answered 201.
    created: BTreeSet<String>,
    /// Orders whose payment callback was answered 2xx.
    paid: BTreeSet<String>,
    /// Paid at WeChat, callback refused: WeChat will deliver again.
    undelivered: BTreeSet<String>,
}

/// Points per `coins_100` purchase (100 paid + 10 bonus).
const POINTS: u64 = 100;
const BONUS: u64 = 10;

async fn notify_once(app: &TestApp, sandbox: &WechatSandbox, no: &str, attempt: u32) -> bool {
    let (body, headers) =
        sandbox.notification_for(&format!("EV-{no}-{attempt}"), &sandbox.transaction_json(no));
    let mut req = app
        .client
        .post(format!("{}/api/v1/notify/wechat", app.base))
        .body(body)
        .header("content-type", "application/json");
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.send().await.unwrap().status().is_success()
}

/// Creates an order; `Some` when payd acknowledged it (201), `None` on 503.
async fn create(app: &TestApp, token: &str) -> Option<String> {
    let (status, body) = app
        .post(
            "/api/v1/orders",
            token,
            Some(json!({"package_id": "coins_100", "payment_method": "wechat_native"})),
        )
        .await;
    match status {
        StatusCode::CREATED => Some(order_no(&body)),
        StatusCode::SERVICE_UNAVAILABLE => {
            assert_eq!(body["code"], "storage_unavailable", "{body}");
            None
        }
        other => panic!("create answered {other}: {body}"),
    }
}

/// Buys one order: create, pay at WeChat, deliver the callback once. False when
/// payd refused something (the fault struck).
async fn purchase(
    app: &TestApp,
    sandbox: &WechatSandbox,
    token: &str,
    ledger: &mut Ledger,
) -> bool {
    let Some(no) = create(app, token).await else {
        return false;
    };
    ledger.created.insert(no.clone());
    sandbox.pay(&no, None);
    if notify_once(app, sandbox, &no, 0).await {
        ledger.paid.insert(no);
        true
    } else {
        ledger.undelivered.insert(no);
        false
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// No partial state anywhere: each order's deadline index entries are exactly its
/// timers; paid ⇔ granted with exactly one payment; each user's points are exactly
/// those of their granted orders (granted once, in the same transaction).
fn check_consistent(view: &ReadView, ledger: &Ledger, context: &str) {
    let orders: Vec<(String, Order)> = view.scan_prefix(&ORDERS, &(), usize::MAX, false).unwrap();
    let mut expected_deadlines = BTreeSet::new();
    let mut granted_per_user: BTreeMap<String, u64> = BTreeMap::new();
    let by_no: BTreeMap<&str, &Order> = orders.iter().map(|(k, o)| (k.as_str(), o)).collect();
    for (no, o) in &orders {
        for (kind, t) in o.timers.iter() {
            expected_deadlines.insert((t.at.ms(), no.clone(), kind.as_u8()));
        }
        let paid = o.status == OrderStatus::Paid;
        assert_eq!(
            paid, o.granted,
            "{context}: {no} paid={paid} granted={}",
            o.granted
        );
        if paid {
            assert_eq!(
                o.payments.len(),
                1,
                "{context}: {no} has {} payments",
                o.payments.len()
            );
            *granted_per_user.entry(o.user_id.clone()).or_default() += 1;
        }
    }
    let stored_deadlines: BTreeSet<(i64, String, u8)> = view
        .scan_prefix(&DEADLINES, &(), usize::MAX, false)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        stored_deadlines, expected_deadlines,
        "{context}: deadline index and orders disagree"
    );
    let ents: Vec<(String, Entitlements)> = view
        .scan_prefix(&ENTITLEMENTS, &(), usize::MAX, false)
        .unwrap();
    for (user, e) in &ents {
        let n = granted_per_user.get(user).copied().unwrap_or(0);
        assert_eq!(
            (e.points_paid, e.points_bonus),
            (n * POINTS, n * BONUS),
            "{context}: {user}"
        );
    }
    for (user, n) in &granted_per_user {
        assert!(
            ents.iter().any(|(u, _)| u == user),
            "{context}: {user} has {n} paid orders and no entitlements"
        );
    }
    for no in &ledger.created {
        assert!(
            by_no.contains_key(no.as_str()),
            "{context}: acknowledged order {no} lost"
        );
    }
    for no in &ledger.paid {
        assert_eq!(
            by_no[no.as_str()].status,
            OrderStatus::Paid,
            "{context}: acknowledged payment of {no} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nth_write_commit_or_sync_failing_stops_acknowledgements_and_loses_nothing() {
    let started = std::time::Instant::now();
    let max_n: u64 = std::env::var("PAYD_FAULT_MAX_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // The faults strike above the disk, so the disk's speed does not matter: tmpfs
    // (where there is one) keeps 150 rounds of real syncs cheap.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let sandbox = WechatSandbox::start().await;
    let mut app = TestApp::spawn_real_in(
        dir,
        &[("order_expire = \"4s\"", "order_expire = \"120s\"")],
        &payd_config(&sandbox),
    )
    .await;
    let users: Vec<String> = (0..2).map(|i| app.token(&format!("disk{i}"))).collect();
    let mut ledger = Ledger::default();
    let mut faults = 0;
    let mut attempt = 0;
    for point in [FaultPoint::Write, FaultPoint::Commit, FaultPoint::Sync] {
        for n in 1..=max_n {
            let ctx = format!("{point:?} n={n}");
            let store = app.app().state().store.clone();
            // A pending order whose callback arrives while the disk is broken.
            let spare = create(&app, &users[0])
                .await
                .expect("healthy before the fault");
            ledger.created.insert(spare.clone());
            let (_, m) = app.call(reqwest::Method::GET, "/metrics", None, None).await;
            let failures_before = metric(
                m.as_str().unwrap_or(""),
                "payd_storage_commit_failures_total",
            );
            store.hold_reopen(true);
            store.fail_at(point, n);
            let mut rounds = 0;
            loop {
                let (a, b) = tokio::join!(
                    async {
                        let mut l = Ledger::default();
                        let ok = purchase(&app, &sandbox, &users[0], &mut l).await;
                        (ok, l)
                    },
                    async {
                        let mut l = Ledger::default();
                        let ok = purchase(&app, &sandbox, &users[1], &mut l).await;
                        (ok, l)
                    }
                );
                for l in [a.1, b.1] {
                    ledger.created.extend(l.created);
                    ledger.paid.extend(l.paid);
                    ledger.undelivered.extend(l.undelivered);
                }
                let refused = !a.0 || !b.0;
                if refused && !store.is_healthy() {
                    break;
                }
                rounds += 1;
                assert!(rounds < 500, "{ctx}: the fault never struck");
            }
            faults += 1;
            // Broken: nothing is acknowledged …
            assert!(
                create(&app, &users[1]).await.is_none(),
                "{ctx}: order created on a broken disk"
            );
            sandbox.pay(&spare, None);
            attempt += 1;
            assert!(
                !notify_once(&app, &sandbox, &spare, attempt).await,
                "{ctx}: callback acknowledged on a broken disk"
            );
            ledger.undelivered.insert(spare.clone());
            // … reads are served, /readyz fails, the alert's metrics say so.
            let u = &users[0];
            let (status, body) = app.get(&format!("/api/v1/orders/{spare}"), u).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{ctx}: reads refused on a broken disk: {body}"
            );
            let (status, _) = app.get("/api/v1/me/entitlements", u).await;
            assert_eq!(status, StatusCode::OK, "{ctx}");
            let (status, body) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
            assert_eq!(
                (status, body["storage"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
                "{ctx}"
            );
            let (_, m) = app.call(reqwest::Method::GET, "/metrics", None, None).await;
            let failures = metric(
                m.as_str().unwrap_or(""),
                "payd_storage_commit_failures_total",
            );
            assert!(
                failures > failures_before,
                "{ctx}: commit failure not counted ({failures_before} → {failures})"
            );
            // The disk comes back; WeChat delivers the refused callbacks again.
            store.hold_reopen(false);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !store.is_healthy() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{ctx}: storage never reopened"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            for no in std::mem::take(&mut ledger.undelivered) {
                attempt += 1;
                assert!(
                    notify_once(&app, &sandbox, &no, attempt).await,
                    "{ctx}: redelivered callback of {no} refused"
                );
                ledger.paid.insert(no);
            }
            check_consistent(&app.app().state().store.read().unwrap(), &ledger, &ctx);
        }
    }
    assert_eq!(faults, 3 * max_n);
    // And from disk: a full restart replays the journal to the same state.
    app.restart().await;
    check_consistent(
        &app.app().state().store.read().unwrap(),
        &ledger,
        "after restart",
    );
    eprintln!(
        "storage faults: {faults} faults, {} orders acknowledged, {} payments acknowledged, {:.1} s",
        ledger.created.len(),
        ledger.paid.len(),
        started.elapsed().as_secs_f64()
    );
    app.stop().await;
}

fn start_child(dir: &std::path::Path, port: u16) -> Child {
    let config = crate::crash::child_config(dir, "config.toml", port, "120s", "60s", "");
    let log = std::fs::File::create(dir.join("payd.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_payd"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("payd starts")
}

/// Sets the child's file-size limit (soft; the hard limit stays unlimited so it can
/// be raised again) with util-linux's `prlimit`.
fn set_fsize(pid: u32, soft: &str) {
    let out = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--fsize={soft}:unlimited"))
        .output()
        .expect("prlimit (util-linux) runs");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_ready(client: &reqwest::Client, base: &str, child: &mut Child) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "payd exited");
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payd never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Create + pay through the mock provider; `Some(order_no)` when both were
/// acknowledged, `None` at the first 503.
async fn mock_purchase(client: &reqwest::Client, base: &str, token: &str) -> Option<String> {
    let r = client
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(token)
        .json(&json!({"package_id": "coins_100", "payment_method": "mock"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("payd stopped answering (died at the file-size limit?): {e}"));
    if r.status() == StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    assert_eq!(r.status(), StatusCode::CREATED);
    let order: Value = r.json().await.unwrap();
    let no = order_no(&order);
    let r = client
        .post(format!("{base}/api/v1/mock/orders/{no}/pay"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("payd stopped answering (died at the file-size limit?): {e}"));
    match r.status() {
        StatusCode::OK => Some(no),
        StatusCode::SERVICE_UNAVAILABLE => None,
        other => panic!("pay answered {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_size_limit_does_not_kill_payd_stops_acks_keeps_reads_loses_nothing() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let jwt = Jwt::new(&payd::config::AuthConfig {
        jwt_secret: payd::config::Secret::new(SECRET),
        leeway: Duration::from_secs(5),
        issuer: None,
        audience: None,
    });
    let token = jwt.mint("fsize", false, crate::support::now_secs(), 3600);
    let mut child = start_child(dir.path(), port);
    wait_ready(&client, &base, &mut child).await;
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(
            mock_purchase(&client, &base, &token)
                .await
                .expect("healthy disk"),
        );
    }
    // The disk fills up: no file may grow past 1 KiB (every journal already has).
    set_fsize(child.id(), "1024");
    let mut refused = false;
    for _ in 0..50 {
        match mock_purchase(&client, &base, &token).await {
            Some(no) => acked.push(no),
            None => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "payd kept acknowledging past the file-size limit");
    assert!(
        child.try_wait().unwrap().is_none(),
        "payd died at the file-size limit (SIGXFSZ)"
    );
    // Still refusing, still reading, not ready, alerting.
    assert!(mock_purchase(&client, &base, &token).await.is_none());
    let r = client
        .get(format!("{base}/api/v1/orders/{}", acked[0]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("payd stopped answering (died at the file-size limit?): {e}"));
    assert_eq!(r.status(), StatusCode::OK, "reads refused on a full disk");
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let m = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&m, "payd_storage_healthy"), 0.0, "{m}");
    assert!(metric(&m, "payd_storage_commit_failures_total") >= 1.0);
    // Space again: payd reopens by itself and acknowledges again.
    set_fsize(child.id(), "unlimited");
    wait_ready(&client, &base, &mut child).await;
    for _ in 0..5 {
        acked.push(
            mock_purchase(&client, &base, &token)
                .await
                .expect("recovered"),
        );
    }
    // And after a restart nothing acknowledged is lost, nothing half-written remains.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = start_child(dir.path(), port);
    wait_ready(&client, &base, &mut child).await;
    for no in &acked {
        let order: Value = client
            .get(format!("{base}/api/v1/orders/{no}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(order["status"], "paid", "acknowledged payment of {no} lost");
    }
    let list: Value = client
        .get(format!("{base}/api/v1/orders?status=paid&page_size=100"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paid = list["total"].as_u64().unwrap();
    assert!(paid >= acked.len() as u64);
    let ents: Value = client
        .get(format!("{base}/api/v1/me/entitlements"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ents["points"].as_u64(),
        Some(paid * (POINTS + BONUS)),
        "{ents}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "file-size limit: {} payments acknowledged, {paid} paid, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}

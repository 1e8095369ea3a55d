//! Power loss: payd as a child process under a recorder (`tests/powercut/shim.c`,
//! an `LD_PRELOAD` library compiled here with the machine's `cc`) that logs every
//! write, truncate, directory-entry change and sync under the data directory, each
//! with a wall-clock time. Buyers create and pay orders and note when each payment
//! was acknowledged; payd is killed at a seeded random moment (sometimes while it is
//! still recovering from the previous cut).
//!
//! The log then gives power cuts at any moment of the run, not only at the kill: for
//! the end of the log and for seeded points inside it (half of them just after a
//! journal write whose sync had not finished yet), the data directory is rebuilt as a
//! power cut at that point would leave it — the snapshot taken before the start plus
//! only what a completed fsync/fdatasync covered, the rest dropped, torn or partly
//! kept (see `fsmodel.rs` for the rules). payd opens each such directory and the
//! audit checks G1 (every payment acknowledged before the cut is paid), G2 (nothing
//! credited twice: 110 points per paid order, per user) and G3 (money confirmed =
//! money granted, store-wide). The next run starts from the end-of-log directory, so
//! cuts accumulate.
//!
//! Every run also checks the recorder: all logged operations replayed on the
//! snapshot must give the directory payd really left, byte for byte — a write that
//! escaped the shim (a raw syscall, an mmap) fails the test instead of passing it
//! silently.
//!
//! Seeded: `PAYD_POWERCUT_SEED` replays the cut points and tearing of a run (the
//! kill moments are wall-clock, so the logs differ), `PAYD_POWERCUT_RUNS` sets the
//! number of runs (6 by default, each audited at its end and at 2 points inside: 18
//! power cuts; the long variant uses 100 runs = 300 cuts).

mod fsmodel;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payd::auth::Jwt;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;

use crate::crash::{SECRET, config, wait_ready};
use fsmodel::CUTS;

/// Compiles the recorder into `dir`.
fn build_shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powercut/shim.c");
    let out = dir.join("powercut-shim.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("cc runs (the power-cut test compiles its recorder with the machine's C compiler)");
    assert!(status.success(), "compiling {}", src.display());
    out
}

/// A payd child process, killed when dropped (a failing assertion must not leave
/// it running).
struct Payd(Child);

impl Payd {
    /// SIGKILL: the power cut (or the end of an audit).
    fn kill(&mut self) -> std::process::ExitStatus {
        self.0.kill().expect("SIGKILL");
        self.0.wait().unwrap()
    }
}

impl Drop for Payd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &Path, recorder: Option<(&Path, &Path, &Path)>) -> Payd {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payd"));
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some((shim, data, log)) = recorder {
        cmd.env("LD_PRELOAD", shim)
            .env("PAYD_POWERCUT_DIR", data)
            .env("PAYD_POWERCUT_LOG", log);
    }
    Payd(cmd.spawn().expect("payd starts"))
}

/// crash.rs's configuration, with the per-address limits out of the way: the audit
/// reads hundreds of orders from 127.0.0.1 in a second.
fn powercut_config(root: &Path, port: u16) -> PathBuf {
    let path = config(root, port);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[rate_limit]\npayment_per_minute = 100000\nread_per_minute = 1000000\ncallback_per_minute = 1000000\n",
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An acknowledged payment: who, which order, when the 200 "paid" arrived (ns).
type Ack = (String, String, i64);

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// One buyer: create an order, pay it; every 200 "paid" is an acknowledgement.
async fn buyer(
    client: reqwest::Client,
    base: String,
    token: String,
    user: String,
    acked: Arc<Mutex<Vec<Ack>>>,
) {
    loop {
        let Ok(r) = client
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"package_id": "coins_100", "payment_method": "mock"}))
            .send()
            .await
        else {
            return;
        };
        if r.status() != StatusCode::CREATED {
            return;
        }
        let Ok(order) = r.json::<Value>().await else {
            return;
        };
        let no = order["order_no"].as_str().unwrap_or_default().to_string();
        let Ok(r) = client
            .post(format!("{base}/api/v1/mock/orders/{no}/pay"))
            .bearer_auth(&token)
            .send()
            .await
        else {
            return;
        };
        if r.status() == StatusCode::OK
            && let Ok(paid) = r.json::<Value>().await
            && paid["status"] == "paid"
        {
            acked.lock().unwrap().push((user.clone(), no, now_ns()));
        }
    }
}

struct Audit<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    jwt: &'a Jwt,
    users: &'a [String],
}

#[derive(Debug, Default)]
struct Findings {
    checked: usize,
    lost: Vec<String>,
    wrong: Vec<String>,
    paid: u64,
    confirmed_minor: i64,
    granted_minor: i64,
    paid_store_wide: u64,
}

impl Audit<'_> {
    /// The JSON answer, or (as a finding) what came instead.
    async fn get(&self, path: &str, user: &str, admin: bool, f: &mut Findings) -> Value {
        let token = self.jwt.mint(user, admin, now_secs(), 3600);
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if status != StatusCode::OK {
            f.wrong
                .push(format!("GET {path} as {user}: {status} {body}"));
            return Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    /// G1 for `acked`, G2 per user, G3 store-wide, on the payd running now.
    async fn run(&self, acked: &[&Ack]) -> Findings {
        let mut f = Findings::default();
        for (user, no, _) in acked {
            let token = self.jwt.mint(user, false, now_secs(), 3600);
            let r = self
                .client
                .get(format!("{}/api/v1/orders/{no}", self.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            // 404: the order itself is gone.
            let status = match r.status() {
                StatusCode::OK => r.json::<Value>().await.unwrap()["status"].clone(),
                other => Value::String(other.to_string()),
            };
            if status != "paid" {
                f.lost.push(format!("{no}: {status}"));
            }
            f.checked += 1;
        }
        // After a restart, polling may still be settling orders whose payment the
        // (mock) provider holds but whose transition the cut took: read the users,
        // the store-wide figures, and the users again, until nothing moved between.
        for _ in 0..20 {
            let mut g = Findings::default();
            let first = self.users_pass(&mut g).await;
            let stats = self
                .get(
                    "/api/v1/admin/orders/statistics?days=2",
                    "ops-admin",
                    true,
                    &mut g,
                )
                .await;
            let second = self.users_pass(&mut g).await;
            if first != second && g.wrong.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            for (user, (paid, points)) in self.users.iter().zip(&second) {
                // 110 points are granted per 990-fen order.
                if *points != paid * 110 {
                    g.wrong
                        .push(format!("{user}: {paid} paid orders, {points} points"));
                }
                f.paid += paid;
                f.granted_minor += (points / 110) as i64 * 990;
            }
            f.wrong.extend(g.wrong);
            f.confirmed_minor = stats["paid_amount"]["CNY"].as_i64().unwrap_or(0);
            f.paid_store_wide = stats["paid"].as_u64().unwrap_or(0);
            return f;
        }
        f.wrong.push("paid orders never stopped changing".into());
        f
    }
}

impl Audit<'_> {
    /// (paid orders, points) per user.
    async fn users_pass(&self, f: &mut Findings) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for user in self.users {
            let list = self
                .get("/api/v1/orders?status=paid&page_size=1", user, false, f)
                .await;
            let ent = self.get("/api/v1/me/entitlements", user, false, f).await;
            out.push((
                list["total"].as_u64().unwrap_or(0),
                ent["points"].as_u64().unwrap_or(0),
            ));
        }
        out
    }
}

/// A cut point inside the log: uniform, or just after a completed write whose
/// sync had not finished (where tearing matters).
/// The evidence of one cut: the directory before the run, what the cut left, and
/// what the run did up to the cut. Written to `$TMPDIR/payd-powercut-<seed>` when what
/// follows the cut fails — an audit, or payd refusing to start on it.
struct Evidence {
    before: fsmodel::Tree,
    after: fsmodel::Tree,
    history: fsmodel::History,
}

impl Evidence {
    fn keep(&self, seed: u64, data: &str) {
        let keep = std::env::temp_dir().join(format!("payd-powercut-{seed}"));
        let _ = std::fs::remove_dir_all(&keep);
        for (name, tree) in [("before", &self.before), ("after", &self.after)] {
            fsmodel::write_tree(
                &keep.join(name),
                &fsmodel::rebase(tree, data, &keep.join(name)),
            );
        }
        std::fs::write(keep.join("ops.txt"), self.history.describe(data)).unwrap();
        println!("power cut evidence kept in {}", keep.display());
    }
}

/// Waits until payd is ready; `Err` with its exit status if it exits first (it
/// refused to open the directory), or if it is not ready within 20 s.
async fn ready(child: &mut Payd, client: &reqwest::Client, base: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(exit) = child.0.try_wait().unwrap() {
            return Err(format!("payd exited while starting: {exit}"));
        }
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("payd never became ready".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cut_point(log: &[fsmodel::Rec], rng: &mut impl Rng) -> usize {
    let after_writes: Vec<usize> = (1..log.len())
        .filter(|&i| log[i - 1].is_write_done(log))
        .collect();
    if !after_writes.is_empty() && rng.random_bool(0.5) {
        after_writes[rng.random_range(0..after_writes.len())]
    } else {
        rng.random_range(0..=log.len())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_keeps_every_acknowledged_payment_and_credits_nothing_twice() {
    let runs: usize = std::env::var("PAYD_POWERCUT_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    const INNER_CUTS: usize = 2;
    let seed: u64 = std::env::var("PAYD_POWERCUT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!(
        "power-cut test: seed {seed} ({runs} runs × {} cuts); replay with PAYD_POWERCUT_SEED={seed}",
        INNER_CUTS + 1
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let shim = build_shim(&root);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = powercut_config(&root, port);
    let data = root.join("data");
    let data_str = data.to_string_lossy().into_owned();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let jwt = Jwt::new(&payd::config::AuthConfig {
        jwt_secret: payd::config::Secret::new(SECRET),
        leeway: Duration::from_secs(5),
        issuer: None,
        audience: None,
    });
    let users: Vec<String> = (0..8).map(|i| format!("power-{i}")).collect();
    let acked: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let audit = Audit {
        client: &client,
        base: &base,
        jwt: &jwt,
        users: &users,
    };

    // The first run creates the database under the recorder too, so cuts land in the
    // middle of fjall's first start (which found the leftovers that
    // `clear_interrupted_creation` in storage/src/store.rs removes).
    // PAYD_POWERCUT_FIRST_START=0 creates the database before the first cut instead.
    std::fs::create_dir_all(&data).unwrap();
    if std::env::var("PAYD_POWERCUT_FIRST_START").is_ok_and(|v| v == "0") {
        let mut child = start(&cfg, None);
        wait_ready(&client, &base).await;
        child.kill();
    }

    let mut totals = BTreeMap::<&str, usize>::new();
    // The last cut, whose directory the next start opens.
    let mut last: Option<Evidence> = None;
    for run in 0..runs {
        let snapshot = fsmodel::read_tree(&data);
        let log_path = root.join(format!("run-{run}.log"));
        let mut child = start(&cfg, Some((&shim, &data, &log_path)));
        let mut tasks = Vec::new();
        if rng.random_bool(0.2) {
            // Killed while payd is still opening (journal recovery, truncation of a
            // torn tail): the next start must cope with a half-finished recovery.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
            *totals.entry("runs killed during startup").or_default() += 1;
        } else {
            if let Err(e) = ready(&mut child, &client, &base).await {
                if let Some(ev) = &last {
                    ev.keep(seed, &data_str);
                }
                panic!("{e} (run {run}, after the last cut of the previous run, seed {seed})");
            }
            for u in &users {
                tasks.push(tokio::spawn(buyer(
                    client.clone(),
                    base.clone(),
                    jwt.mint(u, false, now_secs(), 3600),
                    u.clone(),
                    acked.clone(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        }
        let exit = child.kill();
        for t in tasks {
            t.abort();
        }
        // payd must not have exited on its own (a refused open would show here).
        if exit.code().is_some() {
            if let Some(ev) = &last {
                ev.keep(seed, &data_str);
            }
            panic!("payd exited by itself (run {run}, seed {seed}): {exit}");
        }

        let log = fsmodel::parse_log(&std::fs::read(&log_path).unwrap_or_default());
        std::fs::remove_file(&log_path).ok();
        let whole = fsmodel::resolve(&snapshot, &log);
        let actual = fsmodel::read_tree(&data);
        let gaps = fsmodel::recorder_gaps(&snapshot, &whole, &data_str, &actual);
        assert!(
            gaps.is_empty(),
            "the recorder missed operations on {gaps:?} (run {run}, seed {seed})"
        );
        if std::env::var_os("PAYD_POWERCUT_DEBUG").is_some() {
            println!("run {run}: {:#?}", whole.breakdown(&data_str));
        }
        *totals.entry("logged operations").or_default() += whole.ops_len();
        *totals.entry("syncs").or_default() += whole.syncs;
        *totals.entry("renames seen by their effect").or_default() += whole.inferred_renames;

        // Cut points: inside the log first, the end last (the next run starts there).
        let mut points: Vec<usize> = (0..INNER_CUTS).map(|_| cut_point(&log, &mut rng)).collect();
        points.push(log.len());
        for (i, &k) in points.iter().enumerate() {
            let history = fsmodel::resolve(&snapshot, &log[..k]);
            let cut = CUTS[rng.random_range(0..CUTS.len())];
            let (after, stats) =
                fsmodel::after_power_loss(&snapshot, &history, &data_str, cut, &mut rng);
            std::fs::remove_dir_all(&data).unwrap();
            fsmodel::write_tree(&data, &after);
            *totals.entry("power cuts").or_default() += 1;
            *totals.entry(cut.name()).or_default() += 1;
            *totals.entry("unsynced bytes dropped").or_default() += stats.lost_bytes;
            *totals.entry("unsynced operations").or_default() += stats.ops - stats.durable;
            let evidence = Evidence {
                before: snapshot.clone(),
                after,
                history,
            };
            if i + 1 == points.len() {
                last = Some(evidence);
                break; // the end of the log: audited by the next run's start and at the end
            }
            // Acknowledged before the cut: the reply arrived before the record at k
            // was written, so the commit's sync had returned before it.
            let t_cut = log.get(k).map_or(i64::MAX, |r| r.t_ns);
            let all = acked.lock().unwrap().clone();
            // This run's acknowledgements all; earlier runs' (checked at their own
            // cuts) a sample of 100, to keep the long variant linear.
            let run_started = log.first().map_or(i64::MAX, |r| r.t_ns);
            let mut before: Vec<&Ack> = all.iter().filter(|a| a.2 < t_cut).collect();
            let earlier = before.iter().filter(|a| a.2 < run_started).count();
            if earlier > 100 {
                let keep: std::collections::HashSet<usize> =
                    rand::seq::index::sample(&mut rng, earlier, 100)
                        .into_iter()
                        .collect();
                let mut i = 0;
                before.retain(|a| {
                    if a.2 >= run_started {
                        return true;
                    }
                    i += 1;
                    keep.contains(&(i - 1))
                });
            }
            let mut child = start(&cfg, None);
            if let Err(e) = ready(&mut child, &client, &base).await {
                evidence.keep(seed, &data_str);
                panic!("{e} after a power cut at record {k} of run {run} ({cut:?}, seed {seed})");
            }
            let f = audit.run(&before).await;
            child.kill();
            let ok =
                f.lost.is_empty() && f.wrong.is_empty() && f.confirmed_minor == f.granted_minor;
            if !ok {
                evidence.keep(seed, &data_str);
            }
            assert!(
                ok,
                "power cut at record {k} of run {run} ({cut:?}, seed {seed}): {f:?}"
            );
            *totals.entry("acknowledged payments checked").or_default() += f.checked;
        }
    }

    // Open the last directory without the recorder and audit everything.
    let mut child = start(&cfg, None);
    if let Err(e) = ready(&mut child, &client, &base).await {
        if let Some(ev) = &last {
            ev.keep(seed, &data_str);
        }
        panic!("{e} after the last cut (seed {seed})");
    }
    let all = acked.lock().unwrap().clone();
    assert!(!all.is_empty(), "the load produced no acknowledged payment");
    let f = audit.run(&all.iter().collect::<Vec<_>>()).await;
    child.kill();
    *totals.entry("acknowledged payments checked").or_default() += f.checked;
    println!(
        "power-cut test: {runs} runs, {} acknowledged payments, {} paid orders at the end, {} lost, {} users credited wrongly, confirmed {} = granted {} fen; {totals:?}",
        all.len(),
        f.paid,
        f.lost.len(),
        f.wrong.len(),
        f.confirmed_minor,
        f.granted_minor,
    );
    let last = f;
    assert!(
        last.lost.is_empty(),
        "acknowledged payments lost (G1, seed {seed}): {:?}",
        last.lost
    );
    assert!(
        last.wrong.is_empty(),
        "entitlements differ from 110 points per paid order (G2, seed {seed}): {:?}",
        last.wrong
    );
    assert_eq!(
        last.paid_store_wide, last.paid,
        "paid orders store-wide vs per user (G3, seed {seed})"
    );
    assert_eq!(
        last.confirmed_minor, last.granted_minor,
        "money confirmed vs money granted (G3, seed {seed})"
    );
}

/// Regression: fjall does not fsync `keyspaces/` after creating a keyspace folder in
/// it, so a power cut soon after the first start could take every keyspace with it
/// and fjall would open an empty database without complaint. payd now fsyncs the
/// data directory's folders once it has opened them (`sync_directories` in
/// storage/src/store.rs): once payd is ready, a cut keeps every directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_right_after_the_first_start_keeps_every_keyspace_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let shim = build_shim(&root);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = powercut_config(&root, port);
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data_str = data.to_string_lossy().into_owned();
    let client = reqwest::Client::new();
    let log_path = root.join("first-start.log");
    let mut child = start(&cfg, Some((&shim, &data, &log_path)));
    wait_ready(&client, &format!("http://127.0.0.1:{port}")).await;
    child.kill();
    let log = fsmodel::parse_log(&std::fs::read(&log_path).unwrap());
    let snapshot = fsmodel::Tree::new();
    let history = fsmodel::resolve(&snapshot, &log);
    let actual = fsmodel::read_tree(&data);
    assert!(fsmodel::recorder_gaps(&snapshot, &history, &data_str, &actual).is_empty());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let (after, _) = fsmodel::after_power_loss(
        &snapshot,
        &history,
        &data_str,
        fsmodel::Cut::Strict,
        &mut rng,
    );
    let dirs = |t: &fsmodel::Tree| -> Vec<String> {
        t.iter()
            .filter(|(_, e)| matches!(e, fsmodel::Entry::Dir))
            .map(|(p, _)| p.clone())
            .collect()
    };
    let kept = dirs(&after);
    let missing: Vec<String> = dirs(&actual)
        .into_iter()
        .filter(|d| !kept.contains(d))
        .collect();
    assert!(
        missing.is_empty(),
        "directories a power cut would lose once payd is ready: {missing:?}"
    );
    assert!(
        dirs(&actual).iter().any(|d| d.ends_with("/keyspaces/1")),
        "fjall's layout changed: no keyspaces/1 under the data directory"
    );
}

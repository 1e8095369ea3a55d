//! `cargo run -p payd-bench --release`: payd and a minimal axum baseline measured
//! side by side in one run, on loopback, with the same load generator, the same
//! build profile and the same machine state — so the ratios mean something even on
//! a busy two-core box.
//!
//! It builds the release binaries (`payd`, `baseline`), starts each as a child
//! process with a temporary data directory under `target/bench/`, drives load from
//! this process, and prints one table of medians over several rounds; the same
//! figures go to `target/bench/latest.json`. The group-commit figure runs payd in
//! process, to read `Store::stats` (commands and commits) directly. See the README's
//! "Performance" section for what each figure means.

mod load;
mod procs;
mod report;
mod scenarios;
mod storm;
mod wechat;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::StatusCode;
use payd::app::Application;
use payd::auth::Jwt;

use crate::load::{Created, Plan, Users};
use crate::procs::{ALL_PASSIVATED, Server, free_port, payd_config};
use crate::report::{GroupCommit, Memory, Passivation, Results, Sample};
use crate::scenarios::{Callbacks, CreateOrder, MockPurchase, ReadOrder};

const USAGE: &str = "usage: cargo run -p payd-bench --release -- [options]
  --quick            one short round, 10 000 orders for memory/recovery (~1 min)
  --rounds N         rounds of each throughput figure (default 3; medians are reported)
  --duration SECS    measured time per figure and round (default 4)
  --warmup SECS      unmeasured load before each figure (default 1)
  --connections N    concurrent connections (default 64)
  --orders N         pending orders for memory and recovery (default 100000)
  --recoveries N     SIGKILL + restart cycles timed (default 3)
  --storm N          orders expiring in the same second (default 100000; --quick 10000)
  --no-wechat        skip the WeChat v3 figures
  --only LIST        comma-separated subset: throughput (= baseline,create,read,purchase),
                     group-commit, wechat, memory, expiry-storm
  --no-build         use the binaries already in the target directory
  --data-dir DIR     where temporary data directories go (default target/bench/tmp)
  --out FILE         JSON output (default target/bench/latest.json)
  --keep             keep the temporary directories (payd's logs and data)";

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    orders: u64,
    recoveries: usize,
    storm: u64,
    wechat: bool,
    only: Option<Vec<String>>,
    build: bool,
    data_dir: Option<PathBuf>,
    out: Option<PathBuf>,
    quick: bool,
    keep: bool,
}

impl Options {
    fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == part))
    }

    /// A figure of the throughput group.
    fn wants_figure(&self, figure: &str) -> bool {
        self.wants("throughput") || self.wants(figure)
    }

    fn plan(&self) -> Plan {
        Plan {
            connections: self.connections,
            warmup: self.warmup,
            duration: Some(self.duration),
            limit: None,
            cpu_of: None,
        }
    }

    /// [`Options::plan`], measuring `server`'s CPU time per operation too.
    fn plan_for(&self, server: &Server) -> Plan {
        Plan {
            cpu_of: Some(server.pid()),
            ..self.plan()
        }
    }
}

fn parse_args() -> anyhow::Result<Options> {
    let mut o = Options {
        rounds: 3,
        duration: Duration::from_secs(4),
        warmup: Duration::from_secs(1),
        connections: 64,
        orders: 100_000,
        recoveries: 3,
        storm: 100_000,
        wechat: true,
        only: None,
        build: true,
        data_dir: None,
        out: None,
        quick: false,
        keep: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--quick") {
        o.quick = true;
        o.rounds = 1;
        o.duration = Duration::from_secs(2);
        o.warmup = Duration::from_millis(500);
        o.orders = 10_000;
        o.recoveries = 1;
        o.storm = 10_000;
    }
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        let secs = |v: String| -> anyhow::Result<Duration> {
            let s: f64 = v.parse().with_context(|| format!("{v:?} is not seconds"))?;
            if !(s > 0.0 && s < 3600.0) {
                bail!("{s} seconds is out of range");
            }
            Ok(Duration::from_secs_f64(s))
        };
        match flag.as_str() {
            "--quick" => {}
            "--rounds" => o.rounds = value()?.parse()?,
            "--duration" => o.duration = secs(value()?)?,
            "--warmup" => o.warmup = secs(value()?)?,
            "--connections" => o.connections = value()?.parse()?,
            "--orders" => o.orders = value()?.parse()?,
            "--recoveries" => o.recoveries = value()?.parse()?,
            "--storm" => o.storm = value()?.parse()?,
            "--no-wechat" => o.wechat = false,
            "--only" => {
                o.only = Some(value()?.split(',').map(|s| s.trim().to_string()).collect());
            }
            "--no-build" => o.build = false,
            "--data-dir" => o.data_dir = Some(value()?.into()),
            "--out" => o.out = Some(value()?.into()),
            "--keep" => o.keep = true,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    const PARTS: [&str; 9] = [
        "throughput",
        "baseline",
        "create",
        "read",
        "purchase",
        "group-commit",
        "wechat",
        "memory",
        "expiry-storm",
    ];
    if let Some(unknown) = o
        .only
        .iter()
        .flatten()
        .find(|p| !PARTS.contains(&p.as_str()))
    {
        bail!(
            "--only: unknown part {unknown:?} (one of {})",
            PARTS.join(", ")
        );
    }
    if o.rounds == 0 || o.connections == 0 || o.orders == 0 || o.recoveries == 0 || o.storm == 0 {
        bail!("--rounds, --connections, --orders, --recoveries and --storm must be positive");
    }
    Ok(o)
}

fn main() -> ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("payd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where things are: the workspace, the binaries, the target directory.
struct Paths {
    workspace: PathBuf,
    bin_dir: PathBuf,
    target: PathBuf,
}

impl Paths {
    fn find() -> anyhow::Result<Paths> {
        let exe = std::env::current_exe().context("locating payd-bench itself")?;
        let bin_dir = exe
            .parent()
            .context("payd-bench has no directory")?
            .to_path_buf();
        let target = bin_dir
            .parent()
            .context("payd-bench is not inside a target directory")?
            .to_path_buf();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("bench/ has no parent")?
            .to_path_buf();
        Ok(Paths {
            workspace,
            bin_dir,
            target,
        })
    }

    fn payd(&self) -> PathBuf {
        self.bin_dir.join("payd")
    }

    fn baseline(&self) -> PathBuf {
        self.bin_dir.join("baseline")
    }
}

/// Builds `payd` and `baseline` with this binary's own profile (normally release),
/// so nothing is measured against a stale or debug build.
fn build(paths: &Paths) -> anyhow::Result<()> {
    let release = paths.bin_dir.file_name().is_some_and(|n| n == "release");
    if !release {
        eprintln!("payd-bench: WARNING: not a release build; figures mean little (use --release)");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&paths.workspace)
        .args(["build", "-p", "payd", "-p", "payd-bench", "--bins"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("payd-bench: building payd and baseline ({cmd:?})");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed: {status}");
    }
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("payd-bench: {msg}");
    let _ = std::io::stderr().flush();
}

fn users(count: usize) -> anyhow::Result<Arc<Users>> {
    let cfg = payd::config::load_from_str(
        &format!("[auth]\njwt_secret = \"{}\"\n", procs::JWT_SECRET),
        &|_| None,
        &[],
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let jwt = Jwt::new(&cfg.auth);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let tokens = (0..count)
        .map(|i| jwt.mint(&format!("bench-user-{i}"), false, now, 6 * 3600))
        .collect();
    Ok(Arc::new(Users { tokens }))
}

fn describe(name: &str, s: &Sample) {
    progress(&format!(
        "  {name}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({} ops{})",
        s.per_sec,
        s.p50_ms,
        s.p99_ms,
        s.ops,
        if s.errors > 0 {
            format!(", {} ERRORS", s.errors)
        } else {
            String::new()
        }
    ));
}

fn check(outcome: &load::Outcome, what: &str) -> anyhow::Result<Sample> {
    if outcome.ops() == 0 {
        bail!(
            "{what}: no operation completed ({})",
            outcome
                .first_error
                .as_deref()
                .unwrap_or("no error recorded")
        );
    }
    if outcome.errors > 0 {
        progress(&format!(
            "  {what}: {} errors, first: {}",
            outcome.errors,
            outcome.first_error.as_deref().unwrap_or("?")
        ));
    }
    let s = Sample::of(outcome);
    describe(what, &s);
    Ok(s)
}

fn run(opts: Options) -> anyhow::Result<()> {
    let paths = Paths::find()?;
    if opts.build {
        build(&paths)?;
    }
    for bin in [paths.payd(), paths.baseline()] {
        if !bin.exists() {
            bail!("{} is missing; run without --no-build", bin.display());
        }
    }
    let root = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| paths.target.join("bench/tmp"));
    std::fs::create_dir_all(&root)?;
    let tmp = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&root)
        .with_context(|| format!("creating a temporary directory in {}", root.display()))?;
    let machine = machine();
    progress(&format!(
        "{} × {}, {} MiB RAM, load average {}; data under {}",
        machine["nproc"],
        machine["cpu"].as_str().unwrap_or("?"),
        machine["mem_total_bytes"].as_u64().unwrap_or(0) / (1024 * 1024),
        machine["loadavg_start"].as_str().unwrap_or("?"),
        tmp.path().display()
    ));
    let client = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-client")
        .build()?;
    let users = users(10_000)?;
    let mut results = Results {
        connections: opts.connections,
        ..Results::default()
    };
    let started = Instant::now();

    if ["throughput", "baseline", "create", "read", "purchase"]
        .iter()
        .any(|p| opts.wants(p))
    {
        client.block_on(throughput(&opts, &paths, tmp.path(), &users, &mut results))?;
    }
    if opts.wants("group-commit") {
        group_commit(&opts, &client, tmp.path(), &users, &mut results)?;
    }
    if opts.wants("wechat") && opts.wechat {
        client.block_on(wechat_figures(
            &opts,
            &paths,
            tmp.path(),
            &users,
            &mut results,
        ))?;
    }
    if opts.wants("memory") {
        results.memory = Some(client.block_on(memory(&opts, &paths, tmp.path(), &users))?);
    }
    if opts.wants("expiry-storm") {
        results.storm = Some(client.block_on(expiry_storm(&opts, &paths, tmp.path(), &users))?);
    }

    let table = results.table();
    println!();
    println!("{table}");
    let elapsed = started.elapsed().as_secs_f64();
    let mut machine = machine;
    machine["loadavg_end"] = serde_json::json!(loadavg());
    let doc = serde_json::json!({
        "format": 1,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
        "git": git(&paths.workspace),
        "machine": machine,
        "options": {
            "rounds": opts.rounds, "duration_secs": opts.duration.as_secs_f64(),
            "warmup_secs": opts.warmup.as_secs_f64(), "connections": opts.connections,
            "orders": opts.orders, "recoveries": opts.recoveries, "storm_orders": opts.storm,
            "quick": opts.quick,
        },
        "elapsed_secs": (elapsed * 10.0).round() / 10.0,
        "results": results.json(),
        "table": table,
    });
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| paths.target.join("bench/latest.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    progress(&format!(
        "done in {elapsed:.0} s; figures written to {}",
        out.display()
    ));
    if opts.keep {
        progress(&format!("kept {}", tmp.keep().display()));
    }
    Ok(())
}

/// Baseline, create, read and purchase, interleaved round by round so that a noisy
/// neighbour hits all of them alike.
async fn throughput(
    opts: &Options,
    paths: &Paths,
    tmp: &Path,
    users: &Arc<Users>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let dir = tmp.join("throughput");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let port_s = port.to_string();
    let mut baseline = Server::spawn(
        &paths.baseline(),
        &["--port", &port_s],
        port,
        &dir.join("baseline.log"),
    )?;
    baseline.wait_ready(Duration::from_secs(120)).await?;
    let port = free_port()?;
    let mut payd = Server::payd(
        &paths.payd(),
        &dir,
        port,
        &payd_config(port, &dir.join("data"), "", ""),
    )?;
    payd.wait_ready(Duration::from_secs(120)).await?;

    let created: Created = Arc::new(Mutex::new(Vec::new()));
    let create_mock = Arc::new(CreateOrder::new(
        users.clone(),
        "mock",
        Some((created.clone(), 50_000)),
    ));
    let baseline_work = Arc::new(CreateOrder::new(users.clone(), "mock", None));
    let purchase = Arc::new(MockPurchase::new(users.clone()));
    for round in 1..=opts.rounds {
        progress(&format!("throughput, round {round}/{}", opts.rounds));
        if opts.wants_figure("baseline") {
            let o = load::run(
                baseline.addr,
                baseline_work.clone(),
                opts.plan_for(&baseline),
            )
            .await?;
            results.baseline.push(check(&o, "baseline")?);
        }
        if opts.wants_figure("create") {
            let o = load::run(payd.addr, create_mock.clone(), opts.plan_for(&payd)).await?;
            results.create.push(check(&o, "create order")?);
        }
        let orders = Arc::new(created.lock().expect("created orders lock").clone());
        if opts.wants_figure("read") && !orders.is_empty() {
            let read = Arc::new(ReadOrder {
                users: users.clone(),
                orders,
            });
            let o = load::run(payd.addr, read, opts.plan_for(&payd)).await?;
            results.read.push(check(&o, "read order")?);
        }
        if opts.wants_figure("purchase") {
            let o = load::run(payd.addr, purchase.clone(), opts.plan_for(&payd)).await?;
            results.purchase.push(check(&o, "create + mock pay")?);
        }
    }
    baseline.kill();
    payd.kill();
    Ok(())
}

/// Appends 4 KiB and `fdatasync`s, over and over: what one sync costs on this disk.
fn raw_fdatasync(dir: &Path, duration: Duration) -> anyhow::Result<load::Outcome> {
    let path = dir.join("raw-fdatasync");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0x5au8; 4096];
    let mut outcome = load::Outcome::default();
    let started = Instant::now();
    while started.elapsed() < duration {
        let t0 = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        let us = t0.elapsed().as_micros();
        outcome
            .latencies_us
            .push(u32::try_from(us).unwrap_or(u32::MAX));
    }
    outcome.window = started.elapsed();
    outcome.latencies_us.sort_unstable();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(outcome)
}

/// Group commit at saturation: payd in process (its own runtime, two workers), create
/// order load from the client runtime, `Store::stats` read before and after each
/// measured window; and the raw fdatasync loop on the same disk, between rounds.
fn group_commit(
    opts: &Options,
    client: &tokio::runtime::Runtime,
    tmp: &Path,
    users: &Arc<Users>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let dir = tmp.join("group-commit");
    std::fs::create_dir_all(&dir)?;
    let text = payd_config(0, &dir.join("data"), "", "");
    let cfg = payd::config::load_from_str(&text, &|_| None, &[])
        .map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("payd-in-process")
        .build()?;
    let app = server.block_on(Application::build(cfg))?;
    let addr = app.addr();
    let work = Arc::new(CreateOrder::new(users.clone(), "mock", None));
    let levels = [opts.connections, opts.connections * 4];
    for round in 1..=opts.rounds {
        progress(&format!("group commit, round {round}/{}", opts.rounds));
        let raw = raw_fdatasync(&dir, opts.duration.div_f64(2.0).max(Duration::from_secs(1)))?;
        results.raw_fsync.push(check(&raw, "raw 4 KiB fdatasync")?);
        for connections in levels {
            let warm = Plan {
                connections,
                warmup: Duration::ZERO,
                duration: Some(opts.warmup),
                limit: None,
                cpu_of: None,
            };
            client.block_on(load::run(addr, work.clone(), warm))?;
            let before = app.state().store.stats();
            let t0 = Instant::now();
            let plan = Plan {
                connections,
                warmup: Duration::ZERO,
                duration: Some(opts.duration),
                limit: None,
                cpu_of: None,
            };
            let o = client.block_on(load::run(addr, work.clone(), plan))?;
            let after = app.state().store.stats();
            let secs = t0.elapsed().as_secs_f64();
            let s = check(&o, &format!("in-process create, {connections} conns"))?;
            let g = GroupCommit {
                connections,
                commands: after.commands - before.commands,
                commits: after.commits - before.commits,
                secs,
                orders_per_sec: s.per_sec,
                execute_secs: (after.execute - before.execute).as_secs_f64(),
                commit_secs: (after.commit - before.commit).as_secs_f64(),
                wait_secs: (after.group_wait - before.group_wait).as_secs_f64(),
            };
            progress(&format!(
                "  {:.1} commands per commit, {:.0} commits/s; {}",
                g.per_commit(),
                g.commits_per_sec(),
                g.writer_time()
            ));
            results.group_commit.push(g);
        }
    }
    server.block_on(app.stop());
    Ok(())
}

/// WeChat v3: orders created through the stub (payd signs each request and verifies
/// each answer), then a signed, encrypted callback for each (built untimed).
async fn wechat_figures(
    opts: &Options,
    paths: &Paths,
    tmp: &Path,
    users: &Arc<Users>,
    results: &mut Results,
) -> anyhow::Result<()> {
    let dir = tmp.join("wechat");
    std::fs::create_dir_all(&dir)?;
    let stub = wechat::start_stub().await?;
    let port = free_port()?;
    let section = wechat::payd_section(&dir, &stub)?;
    let config = payd_config(port, &dir.join("data"), "mock_mode = false", &section);
    let mut payd = Server::payd(&paths.payd(), &dir, port, &config)?;
    payd.wait_ready(Duration::from_secs(120)).await?;
    for round in 1..=opts.rounds {
        progress(&format!("WeChat v3, round {round}/{}", opts.rounds));
        let created: Created = Arc::new(Mutex::new(Vec::new()));
        let work = Arc::new(CreateOrder::new(
            users.clone(),
            "wechat_native",
            Some((created.clone(), usize::MAX)),
        ));
        let o = load::run(payd.addr, work, opts.plan_for(&payd)).await?;
        results
            .wechat_create
            .push(check(&o, "create order (WeChat v3)")?);
        if round == 1 {
            results.passivation = Some(passivation(&payd).await?);
        }
        let orders = created.lock().expect("created orders lock").clone();
        let t0 = Instant::now();
        let callbacks = tokio::task::block_in_place(|| wechat::callbacks(&orders, round))?;
        progress(&format!(
            "  signed {} callbacks in {:.1} s (untimed)",
            callbacks.len(),
            t0.elapsed().as_secs_f64()
        ));
        let work = Arc::new(Callbacks {
            path: "/api/v1/notify/wechat",
            want: StatusCode::NO_CONTENT,
            queue: Mutex::new(callbacks),
        });
        let plan = Plan {
            connections: opts.connections,
            warmup: Duration::ZERO,
            duration: Some(opts.duration),
            limit: None,
            // Once the queue runs dry the window goes on idle: no CPU to count.
            cpu_of: Some(payd.pid()),
        };
        let o = load::run(payd.addr, work, plan).await?;
        results
            .wechat_callback
            .push(check(&o, "WeChat v3 callback")?);
    }
    payd.kill();
    Ok(())
}

/// Order actors alive right after a WeChat create round (each pending WeChat order
/// keeps its actor until `passivate_after`, 5 s here, passes without a message) and
/// again after they passivated, with payd's RSS each time.
async fn passivation(payd: &Server) -> anyhow::Result<Passivation> {
    let live = actors_live(payd).await?;
    let (rss_live, _) = payd.memory()?;
    tokio::time::sleep(ALL_PASSIVATED).await;
    let idle = actors_live(payd).await?;
    let (rss_idle, _) = payd.memory()?;
    let p = Passivation {
        live,
        idle,
        rss_live,
        rss_idle,
    };
    progress(&format!(
        "  passivation: {live} order actors alive, RSS {:.1} MiB → {idle} alive, {:.1} MiB {} s later: {:.0} B per actor",
        rss_live as f64 / 1048576.0,
        rss_idle as f64 / 1048576.0,
        ALL_PASSIVATED.as_secs(),
        p.bytes_per_actor()
    ));
    Ok(p)
}

/// `payd_order_actors_live` from payd's `/metrics`.
async fn actors_live(payd: &Server) -> anyhow::Result<u64> {
    let (status, body) = load::get_once(payd.addr, "/metrics").await?;
    if status != StatusCode::OK {
        bail!("/metrics answered {status}");
    }
    metric_value(std::str::from_utf8(&body)?, "payd_order_actors_live").map(|v| v as u64)
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> anyhow::Result<f64> {
    let line = text
        .lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .with_context(|| format!("no {name} in /metrics"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed metrics line")?
        .parse()?)
}

/// Bytes allocated on disk under `path` in files whose name ends with `suffix` (""
/// for all), as `du` counts them: fjall sets a new journal's length to 64 MiB
/// before writing anything into it.
fn dir_size(path: &Path, suffix: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path(), suffix),
            Ok(m) if e.file_name().to_string_lossy().ends_with(suffix) => {
                (m.blocks() * 512).min(m.len())
            }
            _ => 0,
        })
        .sum()
}

/// RSS with `orders` pending orders created through the API, then SIGKILL and the
/// time from spawn to `/readyz` 200, a few times.
async fn memory(
    opts: &Options,
    paths: &Paths,
    tmp: &Path,
    users: &Arc<Users>,
) -> anyhow::Result<Memory> {
    let dir = tmp.join("memory");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let config = payd_config(port, &dir.join("data"), "", "");
    let max_journal_bytes = payd::config::load_from_str(&config, &|_| None, &[])
        .map_err(|e| anyhow::anyhow!("bench config: {e}"))?
        .storage
        .max_journal_size_bytes;
    let mut payd = Server::payd(&paths.payd(), &dir, port, &config)?;
    let start_empty = payd.wait_ready(Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_empty, _) = payd.memory()?;
    progress(&format!(
        "memory: filling with {} pending orders ({} conns)",
        opts.orders, opts.connections
    ));
    let work = Arc::new(CreateOrder::new(users.clone(), "mock", None));
    let plan = Plan {
        connections: opts.connections,
        warmup: Duration::ZERO,
        duration: None,
        limit: Some(opts.orders),
        cpu_of: None,
    };
    let o = load::run(payd.addr, work, plan).await?;
    let fill = check(&o, "create order while filling")?;
    if o.errors > 0 {
        bail!("{} orders failed while filling", o.errors);
    }
    // Give every actor time to passivate (the bench's config: 5 s idle).
    tokio::time::sleep(ALL_PASSIVATED).await;
    let (rss_filled, hwm_filled) = payd.memory()?;
    progress(&format!(
        "  RSS {:.1} MiB empty → {:.1} MiB with {} orders (peak {:.1} MiB)",
        rss_empty as f64 / 1048576.0,
        rss_filled as f64 / 1048576.0,
        opts.orders,
        hwm_filled as f64 / 1048576.0
    ));
    // What each restart replays (stable: nothing is written while idle).
    let journal_bytes = dir_size(&dir.join("data"), ".jnl");
    let mut recovery_secs = Vec::new();
    let mut rss_recovered = 0;
    for i in 0..opts.recoveries {
        payd.kill();
        payd = Server::payd(&paths.payd(), &dir, port, &config)?;
        let t = payd.wait_ready(Duration::from_secs(120)).await?;
        progress(&format!(
            "  recovery after SIGKILL: {:.3} s",
            t.as_secs_f64()
        ));
        recovery_secs.push(t.as_secs_f64());
        if i == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_recovered = payd.memory()?.0;
        }
    }
    payd.kill();
    Ok(Memory {
        orders: opts.orders,
        fill,
        rss_empty,
        rss_filled,
        hwm_filled,
        rss_recovered,
        start_empty_secs: start_empty.as_secs_f64(),
        recovery_secs,
        data_bytes: dir_size(&dir.join("data"), ""),
        journal_bytes,
        max_journal_bytes,
    })
}

/// The expiry storm: `opts.storm` pending orders, all expiring at one instant a
/// little after payd will be ready on them. Create-order load runs just before that
/// instant (calm) and from it until the last of them has settled (storm).
async fn expiry_storm(
    opts: &Options,
    paths: &Paths,
    tmp: &Path,
    users: &Arc<Users>,
) -> anyhow::Result<storm::Storm> {
    use payd_actors::model::Timestamp;
    let dir = tmp.join("expiry-storm");
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let config = payd_config(port, &dir.join("data"), "", "");
    let cfg = payd::config::load_from_str(&config, &|_| None, &[])
        .map_err(|e| anyhow::anyhow!("bench config: {e}"))?;
    let n = opts.storm;
    let tokens = users.tokens.len();
    // How fast this machine fills, now: a few thousand orders into a scratch store.
    let probe = n.min(3_000);
    let scratch = dir.join("probe");
    let far = Timestamp(storm::unix_ms() + 86_400_000);
    let took = storm::fill(&cfg, &scratch, probe, tokens, far).await?;
    std::fs::remove_dir_all(&scratch)?;
    let per_order = took.as_secs_f64() / probe as f64;
    // Filling (slower per order as the store grows: three times the probe's pace),
    // starting payd on the orders (recovery grows with them: ~25 µs each measured),
    // the calm window, and a margin.
    let budget = per_order * n as f64 * 3.0
        + 2.0
        + 40e-6 * n as f64
        + (opts.warmup + opts.duration).as_secs_f64()
        + 2.0;
    let expire_at = Timestamp(storm::unix_ms() + (budget * 1000.0) as i64);
    progress(&format!(
        "expiry storm: writing {n} pending orders that all expire in {budget:.0} s (probe: {:.0} orders/s)",
        1.0 / per_order
    ));
    let fill_secs = storm::fill(&cfg, &dir.join("data"), n, tokens, expire_at)
        .await?
        .as_secs_f64();
    progress(&format!(
        "  written in {fill_secs:.1} s ({:.0} orders/s)",
        n as f64 / fill_secs
    ));
    let mut payd = Server::payd(&paths.payd(), &dir, port, &config)?;
    let start = payd.wait_ready(Duration::from_secs(120)).await?;
    let storm_at = storm::instant_of(expire_at);
    let left = storm_at.saturating_duration_since(Instant::now());
    let calm_window = left
        .saturating_sub(opts.warmup)
        .saturating_sub(Duration::from_millis(500))
        .min(opts.duration);
    if calm_window < Duration::from_millis(500) {
        bail!(
            "expiry storm: payd was ready {:.1} s before the expiry instant, too late for the \
             calm window (filling took {fill_secs:.1} s); a busy machine? run it again",
            left.as_secs_f64()
        );
    }
    progress(&format!(
        "  payd ready on them in {:.2} s; create order before the storm",
        start.as_secs_f64()
    ));
    // The calm window ends just before the storm begins.
    let calm_from = storm_at - (opts.warmup + calm_window + Duration::from_millis(300));
    tokio::time::sleep_until(calm_from.into()).await;
    let work = CreateOrder::new(users.clone(), "mock", None);
    let plan = Plan {
        connections: opts.connections,
        warmup: opts.warmup,
        duration: Some(calm_window),
        limit: None,
        cpu_of: None,
    };
    let calm = check(
        &load::run(payd.addr, Arc::new(work), plan).await?,
        "create order, calm",
    )?;
    tokio::time::sleep_until(storm_at.into()).await;
    progress("  the storm: create order until every one of them has settled");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work = Arc::new(storm::Until {
        inner: CreateOrder::new(users.clone(), "mock", None),
        stop: stop.clone(),
    });
    let plan = Plan {
        connections: opts.connections,
        warmup: Duration::ZERO,
        duration: None,
        limit: None,
        cpu_of: None,
    };
    let load = tokio::spawn(load::run(payd.addr, work, plan));
    let watched = storm::watch(
        payd.addr,
        storm_at,
        n,
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = load.await.context("the storm's load panicked")??;
    let (first_secs, half_secs, secs, settled, progress_points) = watched?;
    let during = check(&during, "create order, during the storm")?;
    payd.kill();
    let s = storm::Storm {
        orders: n,
        fill_secs,
        start_secs: start.as_secs_f64(),
        first_secs,
        half_secs,
        secs,
        settled,
        calm,
        during,
        progress: progress_points,
    };
    progress(&format!(
        "  {settled}/{n} settled in {secs:.1} s ({:.0}/s; first after {first_secs:.2} s, half after {half_secs:.1} s)",
        s.per_sec()
    ));
    Ok(s)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "mem_total_bytes": mem_kib * 1024,
        "kernel": kernel.trim(),
        "loadavg_start": loadavg(),
    })
}

fn git(workspace: &Path) -> serde_json::Value {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    serde_json::json!({
        "commit": run(&["rev-parse", "--short", "HEAD"]),
        "dirty": run(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn a_metric_is_read_by_its_exact_name() {
        let text = "# HELP payd_order_actors_live Order actors alive now\n\
                    # TYPE payd_order_actors_live gauge\n\
                    payd_order_actors_live_total 7\n\
                    payd_order_actors_live 13448\n";
        assert_eq!(
            metric_value(text, "payd_order_actors_live").unwrap(),
            13448.0
        );
        assert!(metric_value(text, "payd_orders_quarantined").is_err());
    }
}

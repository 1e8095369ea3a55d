//! The servers under test as child processes: payd (the release binary, with a
//! config file and a temporary data directory) and the baseline; readiness, RSS from
//! `/proc`, and SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::StatusCode;

use crate::load::get_once;

/// The JWT secret of every payd the bench starts.
pub(crate) const JWT_SECRET: &str = "payd-bench-secret-0123456789abcdef";

/// A free loopback port (bound, then released for the child to take).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `actors.passivate_after` in the benchmark's configuration, in seconds.
const PASSIVATE_AFTER_SECS: u64 = 5;

/// How long to wait after the last message for every idle actor to have passivated:
/// `passivate_after` and a margin for the idle check and the supervisor's handshake.
pub(crate) const ALL_PASSIVATED: std::time::Duration =
    std::time::Duration::from_secs(PASSIVATE_AFTER_SECS + 3);

/// payd's configuration for the benchmark: mock mode unless `extra` says otherwise,
/// orders that stay pending for the whole run (a day to expire, the first status
/// query after an hour), actors passivated after 5 s idle, rate limits out of the
/// way (one client IP sends everything). Everything else is the shipped default.
pub(crate) fn payd_config(port: u16, data: &Path, payment_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
bind = "127.0.0.1:{port}"
base_url = "http://127.0.0.1:{port}"
[storage]
path = {data:?}
[auth]
jwt_secret = "{JWT_SECRET}"
[payment]
order_expire = "24h"
query_interval = "1h"
{payment_extra}
[actors]
passivate_after = "{PASSIVATE_AFTER_SECS}s"
[rate_limit]
payment_per_minute = 1000000000
read_per_minute = 1000000000
callback_per_minute = 1000000000

[[packages]]
id = "{package}"
kind = "points"
name = "100 coins"
amount = {amount}
currency = "CNY"
points = 100
bonus_points = 10
{extra}
"#,
        data = data.display().to_string(),
        package = crate::scenarios::PACKAGE,
        amount = crate::scenarios::AMOUNT,
    )
}

/// Environment variable: a command that payd is run under (a profiler), e.g.
/// `valgrind --tool=callgrind`. payd is then stopped with SIGTERM, so the tool can
/// write its output.
pub(crate) const WRAP_ENV: &str = "PAYD_BENCH_WRAP";

/// A child server.
pub(crate) struct Server {
    child: Child,
    /// Run under `PAYD_BENCH_WRAP`: stopped with SIGTERM, not SIGKILL.
    wrapped: bool,
    pub(crate) addr: SocketAddr,
    log: PathBuf,
    /// When the process was spawned.
    pub(crate) spawned: Instant,
}

impl Server {
    /// Starts `bin` with `args`, output to `log`, listening on `port`.
    pub(crate) fn spawn(bin: &Path, args: &[&str], port: u16, log: &Path) -> anyhow::Result<Self> {
        Self::spawn_wrapped(bin, args, port, log, None)
    }

    fn spawn_wrapped(
        bin: &Path,
        args: &[&str],
        port: u16,
        log: &Path,
        wrap: Option<&str>,
    ) -> anyhow::Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let spawned = Instant::now();
        // In the log's directory: no stray `.env` of the caller's is read.
        let cwd = log.parent().unwrap_or(Path::new("."));
        let words: Vec<&str> = wrap
            .map(|w| w.split_whitespace().collect())
            .unwrap_or_default();
        let mut cmd = match words.split_first() {
            Some((tool, tool_args)) => {
                let mut c = Command::new(tool);
                c.args(tool_args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Server {
            child,
            wrapped: !words.is_empty(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: log.to_path_buf(),
            spawned,
        })
    }

    /// Starts payd with `config` (written next to `log`).
    pub(crate) fn payd(bin: &Path, dir: &Path, port: u16, config: &str) -> anyhow::Result<Self> {
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config)?;
        let cfg = cfg.display().to_string();
        let wrap = std::env::var(WRAP_ENV)
            .ok()
            .filter(|w| !w.trim().is_empty());
        Self::spawn_wrapped(
            bin,
            &["serve", "--config", &cfg],
            port,
            &dir.join("payd.log"),
            wrap.as_deref(),
        )
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `/readyz` every 2 ms until it answers 200; returns the time since the
    /// process was spawned.
    pub(crate) async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((status, _)) = get_once(self.addr, "/readyz").await
                && status == StatusCode::OK
            {
                return Ok(self.spawned.elapsed());
            }
            if let Some(exit) = self.child.try_wait()? {
                bail!("{exit} before it was ready; {}", self.tail_log());
            }
            if Instant::now() > deadline {
                bail!("not ready within {within:?}; {}", self.tail_log());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `VmRSS` and `VmHWM` (peak), in bytes.
    pub(crate) fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .context("malformed /proc/<pid>/status line")?
                .parse()?;
            Ok(kib * 1024)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// SIGKILL (SIGTERM when run under a profiler), then reap: what dropping it does.
    pub(crate) fn kill(self) {
        drop(self);
    }

    fn tail_log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("log {}:\n{}", self.log.display(), &text[start..])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.wrapped {
            // Let the profiler write its output: a graceful stop, then the wait.
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

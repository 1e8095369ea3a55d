//! Results: per-round samples, their medians, the table on stdout and the JSON file.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::load::Outcome;

/// One round of one figure.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    /// CPU µs per operation: the server process's, the load generator's.
    pub(crate) cpu_us: Option<(f64, f64)>,
}

impl Sample {
    pub(crate) fn of(o: &Outcome) -> Sample {
        Sample {
            per_sec: o.per_second(),
            p50_ms: o.quantile_ms(0.50),
            p99_ms: o.quantile_ms(0.99),
            ops: o.ops(),
            errors: o.errors,
            cpu_us: o.cpu_us_per_op(),
        }
    }

    fn json(&self) -> Value {
        let mut v = json!({"per_sec": round2(self.per_sec), "p50_ms": round2(self.p50_ms),
               "p99_ms": round2(self.p99_ms), "ops": self.ops, "errors": self.errors});
        if let Some((server, client)) = self.cpu_us {
            v["server_cpu_us_per_op"] = json!(round2(server));
            v["client_cpu_us_per_op"] = json!(round2(client));
        }
        v
    }
}

/// The rounds of one throughput figure.
#[derive(Debug, Clone, Default)]
pub(crate) struct Series {
    pub(crate) rounds: Vec<Sample>,
}

impl Series {
    pub(crate) fn push(&mut self, s: Sample) {
        self.rounds.push(s);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }

    /// Medians of each field across rounds.
    pub(crate) fn median(&self) -> Sample {
        Sample {
            per_sec: median(self.rounds.iter().map(|s| s.per_sec)),
            p50_ms: median(self.rounds.iter().map(|s| s.p50_ms)),
            p99_ms: median(self.rounds.iter().map(|s| s.p99_ms)),
            ops: self.rounds.iter().map(|s| s.ops).sum(),
            errors: self.rounds.iter().map(|s| s.errors).sum(),
            cpu_us: self.cpu_median(),
        }
    }

    /// Medians of the rounds' CPU per operation, if every round measured it.
    fn cpu_median(&self) -> Option<(f64, f64)> {
        let cpu: Option<Vec<(f64, f64)>> = self.rounds.iter().map(|s| s.cpu_us).collect();
        let cpu = cpu.filter(|c| !c.is_empty())?;
        Some((
            median(cpu.iter().map(|c| c.0)),
            median(cpu.iter().map(|c| c.1)),
        ))
    }

    fn json(&self) -> Value {
        json!({"median": self.median().json(),
               "rounds": self.rounds.iter().map(Sample::json).collect::<Vec<_>>()})
    }
}

/// One round of the group-commit figure, read from `Store::stats` in process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GroupCommit {
    pub(crate) connections: usize,
    pub(crate) commands: u64,
    pub(crate) commits: u64,
    pub(crate) secs: f64,
    pub(crate) orders_per_sec: f64,
    /// The storage writer's time running commands, committing, holding batches open.
    pub(crate) execute_secs: f64,
    pub(crate) commit_secs: f64,
    pub(crate) wait_secs: f64,
}

impl GroupCommit {
    pub(crate) fn per_commit(&self) -> f64 {
        ratio(self.commands as f64, self.commits as f64)
    }

    pub(crate) fn commits_per_sec(&self) -> f64 {
        ratio(self.commits as f64, self.secs)
    }

    /// Where the writer thread's time went, per commit and as a share of the window.
    pub(crate) fn writer_time(&self) -> String {
        let per = |x: f64| ratio(x * 1e6, self.commits as f64);
        let share = |x: f64| 100.0 * ratio(x, self.secs);
        format!(
            "writer per commit: commands {:.0} µs, commit (journal, fdatasync, memtables) {:.0} µs, held open {:.0} µs; busy {:.0} % of the time",
            per(self.execute_secs),
            per(self.commit_secs),
            per(self.wait_secs),
            share(self.execute_secs + self.commit_secs + self.wait_secs)
        )
    }

    fn json(&self) -> Value {
        json!({"connections": self.connections, "commands": self.commands, "commits": self.commits,
               "writer_execute_secs": round2(self.execute_secs),
               "writer_commit_secs": round2(self.commit_secs),
               "writer_held_open_secs": round2(self.wait_secs),
               "secs": round2(self.secs), "commands_per_commit": round2(self.per_commit()),
               "commits_per_sec": round2(self.commits_per_sec()),
               "orders_per_sec": round2(self.orders_per_sec)})
    }
}

/// Order actors alive and passivated (see `passivation` in main.rs).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Passivation {
    pub(crate) live: u64,
    pub(crate) idle: u64,
    pub(crate) rss_live: u64,
    pub(crate) rss_idle: u64,
}

impl Passivation {
    /// RSS given back per actor passivated (the allocator may keep some).
    pub(crate) fn bytes_per_actor(&self) -> f64 {
        ratio(
            self.rss_live as f64 - self.rss_idle as f64,
            self.live.saturating_sub(self.idle) as f64,
        )
    }

    fn json(&self) -> Value {
        json!({"actors_live": self.live, "actors_after_passivation": self.idle,
               "rss_live_bytes": self.rss_live, "rss_after_passivation_bytes": self.rss_idle,
               "bytes_per_actor": round2(self.bytes_per_actor())})
    }
}

/// Pending orders in memory and on restart.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memory {
    pub(crate) orders: u64,
    pub(crate) fill: Sample,
    pub(crate) rss_empty: u64,
    pub(crate) rss_filled: u64,
    pub(crate) hwm_filled: u64,
    pub(crate) rss_recovered: u64,
    pub(crate) start_empty_secs: f64,
    pub(crate) recovery_secs: Vec<f64>,
    pub(crate) data_bytes: u64,
    /// The journal replayed at each restart (`*.jnl` in the data directory).
    pub(crate) journal_bytes: u64,
    /// `storage.max_journal_size`: the journal never grows past it.
    pub(crate) max_journal_bytes: u64,
}

impl Memory {
    pub(crate) fn per_order(&self) -> f64 {
        ratio(
            self.rss_filled as f64 - self.rss_empty as f64,
            self.orders as f64,
        )
    }

    pub(crate) fn per_order_recovered(&self) -> f64 {
        ratio(
            self.rss_recovered as f64 - self.rss_empty as f64,
            self.orders as f64,
        )
    }

    pub(crate) fn recovery(&self) -> f64 {
        median(self.recovery_secs.iter().copied())
    }

    /// Linear in the number of orders from the empty start: what start-up would
    /// cost if its work grew with the data.
    pub(crate) fn extrapolated(&self, orders: u64) -> f64 {
        let per = ratio(self.recovery() - self.start_empty_secs, self.orders as f64).max(0.0);
        self.start_empty_secs + per * orders as f64
    }

    /// Recovery is mostly the replay of the journal, which never grows past
    /// `storage.max_journal_size` (older data is in flushed segments, read on
    /// demand): the measured replay scaled up to a full journal. Any number of
    /// orders beyond that costs no more.
    pub(crate) fn journal_bound(&self) -> f64 {
        if self.journal_bytes == 0 {
            return self.recovery();
        }
        let scale = (self.max_journal_bytes as f64 / self.journal_bytes as f64).max(1.0);
        self.start_empty_secs + (self.recovery() - self.start_empty_secs).max(0.0) * scale
    }
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) connections: usize,
    pub(crate) baseline: Series,
    pub(crate) create: Series,
    pub(crate) read: Series,
    pub(crate) purchase: Series,
    pub(crate) wechat_create: Series,
    pub(crate) wechat_callback: Series,
    pub(crate) group_commit: Vec<GroupCommit>,
    pub(crate) raw_fsync: Series,
    pub(crate) memory: Option<Memory>,
    pub(crate) storm: Option<crate::storm::Storm>,
    pub(crate) passivation: Option<Passivation>,
}

pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

impl Results {
    /// Group-commit rounds at `connections`, if any.
    fn group_commit_at(&self, connections: usize) -> Vec<GroupCommit> {
        self.group_commit
            .iter()
            .copied()
            .filter(|g| g.connections == connections)
            .collect()
    }

    fn group_commit_levels(&self) -> Vec<usize> {
        let mut levels: Vec<usize> = self.group_commit.iter().map(|g| g.connections).collect();
        levels.sort_unstable();
        levels.dedup();
        levels
    }

    /// The Markdown table: medians of the rounds and same-run ratios.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let c = self.connections;
        let _ = writeln!(t, "| figure | result | p50 | p99 | vs baseline | target |");
        let _ = writeln!(t, "| --- | --- | --- | --- | --- | --- |");
        let base = self.baseline.median();
        let row = |t: &mut String, name: &str, s: &Series, unit: &str, target: &str| {
            if s.is_empty() {
                return;
            }
            let m = s.median();
            let vs = if base.per_sec > 0.0 {
                format!("{:.2}×", m.per_sec / base.per_sec)
            } else {
                "–".into()
            };
            let _ = writeln!(
                t,
                "| {name} | {} {unit}/s | {:.2} ms | {:.2} ms | {vs} | {target} |",
                rate(m.per_sec),
                m.p50_ms,
                m.p99_ms
            );
        };
        row(
            &mut t,
            &format!("baseline: axum JSON handler, {c} conns"),
            &self.baseline,
            "req",
            "",
        );
        let create = self.create.median();
        let create_target = if self.create.is_empty() {
            String::new()
        } else {
            let ratio_ok = base.per_sec > 0.0 && create.per_sec / base.per_sec >= 0.3;
            format!(
                "≥ 0.30× baseline: {}; p99 ≤ 10 ms: {}",
                verdict(ratio_ok),
                verdict(create.p99_ms <= 10.0)
            )
        };
        row(
            &mut t,
            &format!("create order (mock, durable), {c} conns"),
            &self.create,
            "orders",
            &create_target,
        );
        row(
            &mut t,
            &format!("read order, {c} conns"),
            &self.read,
            "reads",
            "",
        );
        row(
            &mut t,
            &format!("full purchase: create + mock pay, {c} conns"),
            &self.purchase,
            "purchases",
            "",
        );
        row(
            &mut t,
            &format!("create order, WeChat v3 (signed, via stub), {c} conns"),
            &self.wechat_create,
            "orders",
            "",
        );
        row(
            &mut t,
            &format!("signed WeChat v3 payment callback, {c} conns"),
            &self.wechat_callback,
            "callbacks",
            "",
        );
        if !self.wechat_create.is_empty() && !self.wechat_callback.is_empty() {
            let a = self.wechat_create.median().per_sec;
            let b = self.wechat_callback.median().per_sec;
            let both = ratio(1.0, ratio(1.0, a) + ratio(1.0, b));
            let _ = writeln!(
                t,
                "| full purchase, WeChat v3: create + callback (derived) | {} purchases/s | | | {:.2}× | ≥ 0.25× baseline: {} |",
                rate(both),
                ratio(both, base.per_sec),
                verdict(base.per_sec > 0.0 && both / base.per_sec >= 0.25)
            );
        }
        if let Some(p) = &self.passivation {
            let _ = writeln!(
                t,
                "| order actors: pending WeChat orders' actors alive after a create round → 8 s later (`passivate_after` 5 s) | {} → {} actors, RSS {} → {} ({:.0} B per actor) | | | | |",
                p.live,
                p.idle,
                mib(p.rss_live),
                mib(p.rss_idle),
                p.bytes_per_actor()
            );
        }
        let raw = self.raw_fsync.median();
        for level in self.group_commit_levels() {
            let rounds = self.group_commit_at(level);
            let per_commit = median(rounds.iter().map(GroupCommit::per_commit));
            let commits = median(rounds.iter().map(GroupCommit::commits_per_sec));
            let orders = median(rounds.iter().map(|g| g.orders_per_sec));
            let _ = writeln!(
                t,
                "| group commit: storage commands per fdatasync, create order at {level} conns (in process) | {per_commit:.1} commands/fsync ({} fsync/s, {} orders/s) | | | | ≥ 20 per fsync: {} |",
                rate(commits),
                rate(orders),
                verdict(per_commit >= 20.0)
            );
        }
        if !self.raw_fsync.is_empty() {
            let _ = writeln!(
                t,
                "| raw 4 KiB append + fdatasync loop, same disk | {} fsync/s | {:.2} ms | {:.2} ms | | |",
                rate(raw.per_sec),
                raw.p50_ms,
                raw.p99_ms
            );
        }
        if let Some(m) = &self.memory {
            let vs = if base.per_sec > 0.0 {
                format!("{:.2}×", m.fill.per_sec / base.per_sec)
            } else {
                "–".into()
            };
            let _ = writeln!(
                t,
                "| create order while {} pending orders accumulate, {c} conns | {} orders/s | {:.2} ms | {:.2} ms | {vs} | |",
                m.orders,
                rate(m.fill.per_sec),
                m.fill.p50_ms,
                m.fill.p99_ms,
            );
            let _ = writeln!(
                t,
                "| memory: RSS growth per pending order, {} orders, actors passivated | {:.0} B/order (RSS {} → {}, peak {}; after a restart {:.0} B/order) | | | | ≤ 512 B: {} |",
                m.orders,
                m.per_order(),
                mib(m.rss_empty),
                mib(m.rss_filled),
                mib(m.hwm_filled),
                m.per_order_recovered(),
                if m.orders >= 1_000_000 {
                    verdict(m.per_order() <= 512.0).to_string()
                } else {
                    // Fixed costs (memtables, block cache) dominate a small store.
                    "judged at 1 000 000 orders (`--only memory --orders 1000000`)".to_string()
                }
            );
            let bound = m.journal_bound();
            let _ = writeln!(
                t,
                "| recovery: spawn → /readyz 200 after SIGKILL, {} orders stored ({} on disk, {} journal) | {:.2} s (empty database: {:.2} s; at 1M: ≤ {:.2} s with a full {} journal, {:.2} s if it grew with orders) | | | | ≤ 5 s at 1M: {} |",
                m.orders,
                mib(m.data_bytes),
                mib(m.journal_bytes),
                m.recovery(),
                m.start_empty_secs,
                bound,
                mib(m.max_journal_bytes),
                m.extrapolated(1_000_000),
                if m.orders >= 1_000_000 {
                    verdict(m.recovery() <= 5.0).to_string()
                } else {
                    format!("{} by the journal bound", verdict(bound <= 5.0))
                }
            );
        }
        if let Some(s) = &self.storm {
            let vs = |x: f64| {
                if base.per_sec > 0.0 {
                    format!("{:.2}×", x / base.per_sec)
                } else {
                    "–".into()
                }
            };
            let done = if s.finished() {
                format!("{:.1} s", s.secs)
            } else {
                format!("NOT finished: {} of them after {:.0} s", s.settled, s.secs)
            };
            let _ = writeln!(
                t,
                "| expiry storm: {} pending orders expiring in the same second → all expired, create order at {c} conns meanwhile | {done} ({} orders/s settled; first after {:.2} s, half after {:.1} s) | | | | ≤ 60 s: {} |",
                s.orders,
                rate(s.per_sec()),
                s.first_secs,
                s.half_secs,
                verdict(s.finished() && s.secs <= 60.0)
            );
            let _ = writeln!(
                t,
                "| create order during the expiry storm, {c} conns | {} orders/s | {:.2} ms | {:.2} ms | {} | p99 ≤ 50 ms: {} |",
                rate(s.during.per_sec),
                s.during.p50_ms,
                s.during.p99_ms,
                vs(s.during.per_sec),
                verdict(s.during.p99_ms <= 50.0)
            );
            let _ = writeln!(
                t,
                "| create order just before the storm (same payd, same orders pending), {c} conns | {} orders/s | {:.2} ms | {:.2} ms | {} | |",
                rate(s.calm.per_sec),
                s.calm.p50_ms,
                s.calm.p99_ms,
                vs(s.calm.per_sec),
            );
        }
        self.cpu_table(&mut t);
        t
    }

    /// CPU time per operation over the measured windows (medians of the rounds):
    /// what each figure costs, steadier than throughput on a shared host.
    fn cpu_table(&self, t: &mut String) {
        let figures = [
            (
                "baseline: axum JSON handler",
                &self.baseline,
                "the baseline",
            ),
            ("create order (mock, durable)", &self.create, "payd"),
            ("read order", &self.read, "payd"),
            ("full purchase: create + mock pay", &self.purchase, "payd"),
            (
                "create order, WeChat v3 (load generator includes the stub)",
                &self.wechat_create,
                "payd",
            ),
            (
                "signed WeChat v3 payment callback (load generator signs)",
                &self.wechat_callback,
                "payd",
            ),
        ];
        let rows: Vec<_> = figures
            .iter()
            .filter_map(|(name, s, who)| Some((name, s.median().cpu_us?, who)))
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "| CPU per operation (user + system, measured window) | server | load generator |"
        );
        let _ = writeln!(t, "| --- | --- | --- |");
        for (name, (server, client), who) in rows {
            let _ = writeln!(t, "| {name} | {server:.1} µs ({who}) | {client:.1} µs |");
        }
    }

    pub(crate) fn json(&self) -> Value {
        let base = self.baseline.median().per_sec;
        let vs = |s: &Series| {
            if s.is_empty() || base == 0.0 {
                Value::Null
            } else {
                json!(round2(s.median().per_sec / base))
            }
        };
        let gc: Vec<Value> = self.group_commit.iter().map(GroupCommit::json).collect();
        let memory = self.memory.as_ref().map(|m| {
            json!({
                "orders": m.orders, "fill": m.fill.json(),
                "rss_empty_bytes": m.rss_empty, "rss_filled_bytes": m.rss_filled,
                "hwm_filled_bytes": m.hwm_filled, "rss_recovered_bytes": m.rss_recovered,
                "bytes_per_order": round2(m.per_order()),
                "bytes_per_order_after_restart": round2(m.per_order_recovered()),
                "data_dir_bytes": m.data_bytes,
                "journal_bytes": m.journal_bytes,
                "max_journal_bytes": m.max_journal_bytes,
                "recovery_journal_bound_secs": round2(m.journal_bound()),
                "start_empty_secs": round2(m.start_empty_secs),
                "recovery_secs": m.recovery_secs.iter().map(|s| round2(*s)).collect::<Vec<_>>(),
                "recovery_median_secs": round2(m.recovery()),
                "recovery_1m_linear_secs": round2(m.extrapolated(1_000_000)),
            })
        });
        let storm = self.storm.as_ref().map(|s| {
            json!({
                "orders": s.orders, "settled": s.settled, "finished": s.finished(),
                "secs": round2(s.secs), "settled_per_sec": round2(s.per_sec()),
                "first_settled_secs": round2(s.first_secs), "half_settled_secs": round2(s.half_secs),
                "fill_secs": round2(s.fill_secs), "payd_start_secs": round2(s.start_secs),
                "create_order_during": s.during.json(), "create_order_before": s.calm.json(),
                "progress": s.progress.iter().map(|(at, n)| json!([at, n])).collect::<Vec<_>>(),
            })
        });
        json!({
            "connections": self.connections,
            "baseline": self.baseline.json(),
            "create_order": self.create.json(),
            "read_order": self.read.json(),
            "purchase_mock": self.purchase.json(),
            "wechat_create_order": self.wechat_create.json(),
            "wechat_callback": self.wechat_callback.json(),
            "passivation": self.passivation.as_ref().map(Passivation::json),
            "raw_fdatasync_4k": self.raw_fsync.json(),
            "group_commit": gc,
            "memory_and_recovery": memory,
            "expiry_storm": storm,
            "vs_baseline": {
                "create_order": vs(&self.create),
                "read_order": vs(&self.read),
                "purchase_mock": vs(&self.purchase),
                "wechat_create_order": vs(&self.wechat_create),
                "wechat_callback": vs(&self.wechat_callback),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_rounds() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    #[test]
    fn recovery_scales_with_the_journal_up_to_its_cap() {
        let m = Memory {
            orders: 100_000,
            start_empty_secs: 0.1,
            recovery_secs: vec![1.1, 1.0, 1.2],
            journal_bytes: 64 << 20,
            max_journal_bytes: 128 << 20,
            ..Memory::default()
        };
        assert!((m.recovery() - 1.1).abs() < 1e-9);
        assert!((m.journal_bound() - 2.1).abs() < 1e-9);
        assert!((m.extrapolated(1_000_000) - 10.1).abs() < 1e-9);
    }
}

//! The dashboards and alert rules against a real Prometheus: payd runs a small
//! workload while Debian's `prometheus` scrapes it every second on loopback; then
//! every panel expression of `grafana/dashboards/*.json` and every alert expression
//! of `grafana/alerts.yml` goes through Prometheus' HTTP API. Each must be valid,
//! and each metric selector in it must select series — which is what registering
//! counters at zero buys — and each alert's expression, with its comparisons
//! removed, must return series too.
//!
//! Runs only where a `prometheus` binary is on the PATH (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, order_no};

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// Kills Prometheus however the test ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grafana() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana")
}

/// Every panel target's expression, with Grafana's interval variables filled in.
fn dashboard_expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(grafana().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "four dashboards: {files:?}");
    for file in files {
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "15s");
                let what = format!(
                    "{} / {}",
                    dash["title"].as_str().unwrap(),
                    panel["title"].as_str().unwrap()
                );
                out.push((what, expr));
            }
        }
    }
    out
}

/// `(alert name, expr)` from alerts.yml: single-line and `|` block expressions.
fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(grafana().join("alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(n) = trimmed.strip_prefix("- alert:") {
            name = n.trim().to_string();
        } else if let Some(rest) = trimmed.strip_prefix("expr:") {
            let indent = line.len() - trimmed.len();
            let rest = rest.trim();
            if rest == "|" || rest == ">" {
                let mut block = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                out.push((name.clone(), block.join(" ").trim().to_string()));
            } else {
                out.push((name.clone(), rest.trim_matches(['\'', '"']).to_string()));
            }
        }
        i += 1;
    }
    assert!(out.len() >= 10, "alert rules found: {out:?}");
    out
}

/// Metric selectors in a PromQL expression: `payd_*` names and `up`, each with its
/// label matchers.
fn selectors(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let name = &expr[start..i];
            if name.starts_with("payd_") || name == "up" {
                let mut selector = name.to_string();
                if i < bytes.len()
                    && bytes[i] == b'{'
                    && let Some(end) = expr[i..].find('}')
                {
                    selector.push_str(&expr[i..=i + end]);
                    i += end + 1;
                }
                out.push(selector);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The expression with every `<op> <number>` comparison taken out.
fn without_comparisons(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while !rest.is_empty() {
        let op = [">=", "<=", "==", "!=", ">", "<"]
            .iter()
            .find(|op| rest.starts_with(**op));
        if let Some(op) = op {
            let after = rest[op.len()..].trim_start();
            let number_len = after
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(after.len());
            if number_len > 0 {
                rest = &after[number_len..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

async fn query(client: &reqwest::Client, base: &str, expr: &str) -> Value {
    let resp = client
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap();
    resp.json().await.unwrap()
}

fn result_len(answer: &Value) -> usize {
    answer["data"]["result"].as_array().map_or(0, Vec::len)
}

/// Orders paid, failed, cancelled and refunded; refused tokens; a 404; admin reads.
async fn workload(app: &TestApp) {
    let admin = app.admin_token();
    for i in 0..4 {
        let u = app.token(&format!("prom-{i}"));
        let paid = order_no(&app.order(&u, "coins_100", "mock").await);
        app.pay(&u, &paid, "").await;
        let failed = order_no(&app.order(&u, "basic", "mock").await);
        app.post(&format!("/api/v1/mock/orders/{failed}/fail"), &u, None)
            .await;
        let cancelled = order_no(&app.order(&u, "coins_100", "mock").await);
        app.post(&format!("/api/v1/orders/{cancelled}/cancel"), &u, None)
            .await;
        if i == 0 {
            let (status, body) = app
                .post(
                    &format!("/api/v1/admin/orders/{paid}/refunds"),
                    &admin,
                    Some(json!({"reason": "prometheus workload"})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    let (status, _) = app.get("/api/v1/orders", "not-a-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.get("/api/v1/nowhere", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.get("/api/v1/admin/monitor/status", &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_and_alert_expression_selects_series_in_a_real_prometheus() {
    let Some(prometheus) = find_binary("prometheus") else {
        eprintln!("skipped: no prometheus binary on the PATH (.ci/run installs Debian's)");
        return;
    };
    let started = Instant::now();
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: payd\n    static_configs:\n      - targets: [\"{}\"]\n",
            grafana().join("alerts.yml").display().to_string(),
            app.app().addr()
        ),
    )
    .unwrap();
    let _prometheus = Running(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    workload(&app).await;

    // Enough scrapes after the workload for rate() and increase() to see it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", "count_over_time(up{job=\"payd\"}[1m])")])
            .send()
            .await;
        let scrapes = match answer {
            Ok(r) => r.json::<Value>().await.ok().and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|s| s.parse::<f64>().ok())
            }),
            Err(_) => None,
        };
        if scrapes.is_some_and(|n| n >= 4.0) {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped payd");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let up = query(&client, &base, "up{job=\"payd\"}").await;
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");

    let mut problems = Vec::new();
    let mut checked = 0;
    let mut all = dashboard_expressions();
    let alerts = alert_expressions();
    all.extend(
        alerts
            .iter()
            .map(|(n, e)| (format!("alert {n}"), e.clone())),
    );
    for (what, expr) in &all {
        let answer = query(&client, &base, expr).await;
        if answer["status"] != "success" {
            problems.push(format!("{what}: invalid: {expr}: {}", answer["error"]));
            continue;
        }
        for selector in selectors(expr) {
            checked += 1;
            if result_len(&query(&client, &base, &selector).await) == 0 {
                problems.push(format!("{what}: {selector} selects no series"));
            }
        }
    }
    for (name, expr) in &alerts {
        let bare = without_comparisons(expr);
        let answer = query(&client, &base, &bare).await;
        if answer["status"] != "success" || result_len(&answer) == 0 {
            problems.push(format!("alert {name}: `{bare}` returns nothing: {answer}"));
        }
    }
    // The rules loaded into Prometheus are the ones checked here.
    let rules: Value = client
        .get(format!("{base}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, alerts.len(), "{rules}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked > 50, "{checked} selectors checked");
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn selectors_and_comparisons_are_found() {
    assert_eq!(
        selectors("sum by (provider) (increase(payd_x_total{a=\"b\"}[5m])) / up >= 5"),
        ["payd_x_total{a=\"b\"}", "up"]
    );
    assert_eq!(
        without_comparisons("a > 0.10 and b >= 20 or c == 1"),
        "a  and b  or c "
    );
}

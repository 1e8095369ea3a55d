//! Crash under load: payd as a child process, clients buying and paying, SIGKILL at a
//! random moment, restart on the same data directory — and every payment payd had
//! acknowledged is still paid, and nothing was credited twice. Seeded: the seed is
//! printed and `PAYD_CRASH_SEED` replays a run; `PAYD_CRASH_KILLS` sets the count
//! (20 by default; the long variant uses 200).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payd::auth::Jwt;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub(crate) const SECRET: &str = "crash-test-secret-0123456789";

pub(crate) fn config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    child_config(dir, "config.toml", port, "60s", "30s", "")
}

/// The configuration file `name` in `dir` of a payd child process on `port`, its data
/// in `dir/data`, signing tokens with [`SECRET`], selling one points package, its
/// orders pending for `expire` and polled every `interval`; `extra` ends the
/// `[payment]` section (more payment keys, then other sections).
pub(crate) fn child_config(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    expire: &str,
    interval: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
base_url = "http://127.0.0.1:{port}"
[storage]
path = {data:?}
[auth]
jwt_secret = "{SECRET}"
[payment]
order_expire = "{expire}"
query_interval = "{interval}"
{extra}
[[packages]]
id = "coins_100"
kind = "points"
name = "100 coins"
amount = 990
currency = "CNY"
points = 100
bonus_points = 10
"#,
            data = dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    path
}

fn start(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_payd"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("payd starts")
}

pub(crate) async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
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

/// One buyer: create an order, pay it; every 200-paid answer is an acknowledgement.
pub(crate) async fn buyer(
    client: reqwest::Client,
    base: String,
    token: String,
    user: String,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) {
    loop {
        let Ok(r) = client
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(&token)
            .json(&json!({"package_id": "coins_100", "payment_method": "mock"}))
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
            acked.lock().unwrap().push((user.clone(), no));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_payment_and_credits_nothing_twice() {
    let kills: usize = std::env::var("PAYD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("PAYD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("crash test: seed {seed} ({kills} kills); replay with PAYD_CRASH_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(dir.path(), port);
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
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let users: Vec<String> = (0..8).map(|i| format!("crash-{i}")).collect();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();

    for round in 0..kills {
        let mut child = start(&cfg);
        wait_ready(&client, &base).await;
        let tasks: Vec<_> = users
            .iter()
            .map(|u| {
                tokio::spawn(buyer(
                    client.clone(),
                    base.clone(),
                    jwt.mint(u, false, now(), 3600),
                    u.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..400))).await;
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        for t in tasks {
            t.abort();
        }
        let _ = round;
    }

    // Restart once more and audit everything payd acknowledged.
    let mut child = start(&cfg);
    wait_ready(&client, &base).await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "the load produced no acknowledged payment"
    );
    let mut lost = 0;
    for (user, no) in &acked {
        let token = jwt.mint(user, false, now(), 3600);
        let r = client
            .get(format!("{base}/api/v1/orders/{no}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let order: Value = r.json().await.unwrap();
        if order["status"] != "paid" {
            lost += 1;
        }
    }
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    let mut double = 0;
    for user in &users {
        let token = jwt.mint(user, false, now(), 3600);
        let list: Value = client
            .get(format!("{base}/api/v1/orders?status=paid&page_size=100"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut paid = list["total"].as_u64().unwrap();
        // More than 100 paid orders: count the rest page by page.
        let mut page = 2;
        let mut seen = list["items"].as_array().unwrap().len() as u64;
        while seen < paid {
            let more: Value = client
                .get(format!(
                    "{base}/api/v1/orders?status=paid&page_size=100&page={page}"
                ))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            seen += more["items"].as_array().unwrap().len() as u64;
            page += 1;
            if more["items"].as_array().unwrap().is_empty() {
                paid = seen;
            }
        }
        let ent: Value = client
            .get(format!("{base}/api/v1/me/entitlements"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ent["points"].as_u64().unwrap() != paid * 110 {
            double += 1;
        }
        per_user.insert(user, paid);
    }
    child.kill().ok();
    let _ = child.wait();
    println!(
        "crash test: {kills} kills, {} acknowledged payments, {} paid orders in storage, {lost} lost, {double} users credited wrongly",
        acked.len(),
        per_user.values().sum::<u64>()
    );
    assert_eq!(lost, 0, "acknowledged payments lost (seed {seed})");
    assert_eq!(
        double, 0,
        "entitlements differ from 110 points per paid order (seed {seed})"
    );
}

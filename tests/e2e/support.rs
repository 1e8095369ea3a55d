//! `TestApp`: a running payd with helpers to call it and to look inside its storage.

use std::sync::Arc;
use std::time::Duration;

use payd::app::Application;
use payd::auth::Jwt;
use payd::config;
use payd_actors::model::Order;
use payd_actors::order::supervisor::SupervisorStats;
use payd_actors::tables::ORDERS;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Durations in seconds so whole lifecycles run within a test.
pub(crate) const BASE_CONFIG: &str = r#"
[server]
bind = "127.0.0.1:0"
[payment]
order_expire = "4s"
qr_code_expire = "2s"
query_interval = "1s"
query_retry_max = 5
[actors]
passivate_after = "1s"
restart_budget = 3
[auth]
jwt_secret = "test-secret-0123456789abcdef"
[providers]
timeout = "2s"
# Tests drive many requests from 127.0.0.1; tests of the limits lower these.
[rate_limit]
payment_per_minute = 100000
read_per_minute = 1000000
callback_per_minute = 1000000

[[packages]]
id = "basic"
kind = "membership"
name = "Basic"
amount = 990
currency = "CNY"
membership_type = "pro"
validity_days = 30
queries_count = 100
sort_order = 1

[[packages]]
id = "premium"
kind = "membership"
name = "Premium"
amount = 2990
currency = "CNY"
membership_type = "premium"
validity_days = 90
queries_count = 500
sort_order = 2

[[packages]]
id = "coins_100"
kind = "points"
name = "100 coins"
amount = 990
currency = "CNY"
points = 100
bonus_points = 10
sort_order = 10

[[packages]]
id = "usd_pack"
kind = "points"
name = "USD coins"
amount = 499
currency = "USD"
points = 50
sort_order = 20

[[packages]]
id = "retired"
kind = "points"
name = "Retired"
amount = 100
currency = "CNY"
points = 1
is_active = false
sort_order = 30

[[packages]]
id = "whale"
kind = "points"
name = "Too expensive"
amount = 1000001
currency = "CNY"
points = 1
sort_order = 40
"#;

pub(crate) struct TestApp {
    app: Option<Application>,
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) dir: Arc<tempfile::TempDir>,
    config_text: String,
    jwt: Jwt,
}

fn load(text: &str, dir: &std::path::Path) -> config::Config {
    let text = format!("[storage]\npath = {:?}\n{text}", dir.display().to_string());
    let no_env = |_: &str| None;
    config::load_from_str(&text, &no_env, &[]).expect("test config is valid")
}

impl TestApp {
    pub(crate) async fn spawn() -> TestApp {
        Self::spawn_with("").await
    }

    /// The base config with some of its lines replaced (TOML allows no second
    /// `[payment]` table, so settings are changed in place).
    pub(crate) async fn spawn_with_replacements(pairs: &[(&str, &str)]) -> TestApp {
        let mut text = BASE_CONFIG.to_string();
        for (from, to) in pairs {
            assert!(text.contains(from), "config has no {from:?}");
            text = text.replacen(from, to, 1);
        }
        Self::start(text, Arc::new(tempfile::tempdir().unwrap())).await
    }

    /// Real providers instead of the mock: mock mode off, a fixed free port so the
    /// notify URLs payd hands to providers are right, `replacements` applied to the
    /// base config and `extra` (provider tables) appended.
    pub(crate) async fn spawn_real(replacements: &[(&str, &str)], extra: &str) -> TestApp {
        Self::spawn_real_in(tempfile::tempdir().unwrap(), replacements, extra).await
    }

    /// [`TestApp::spawn_real`] on a given data directory.
    pub(crate) async fn spawn_real_in(
        dir: tempfile::TempDir,
        replacements: &[(&str, &str)],
        extra: &str,
    ) -> TestApp {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut text = BASE_CONFIG
            .replacen(
                "bind = \"127.0.0.1:0\"",
                &format!("bind = \"127.0.0.1:{port}\"\nbase_url = \"http://127.0.0.1:{port}\""),
                1,
            )
            .replacen("[payment]", "[payment]\nmock_mode = false", 1);
        for (from, to) in replacements {
            assert!(text.contains(from), "config has no {from:?}");
            text = text.replacen(from, to, 1);
        }
        text.push_str(extra);
        Self::start(text, Arc::new(dir)).await
    }

    /// The base config with `extra` (new tables) appended.
    pub(crate) async fn spawn_with(extra: &str) -> TestApp {
        let text = format!("{BASE_CONFIG}\n{extra}");
        Self::start(text, Arc::new(tempfile::tempdir().unwrap())).await
    }

    /// The base config with `extra` appended, on an existing data directory (a
    /// restored backup, say).
    pub(crate) async fn spawn_in(dir: Arc<tempfile::TempDir>, extra: &str) -> TestApp {
        Self::start(format!("{BASE_CONFIG}\n{extra}"), dir).await
    }

    async fn start(config_text: String, dir: Arc<tempfile::TempDir>) -> TestApp {
        restrict_fixture_keys();
        crate::logcheck::install();
        let cfg = load(&config_text, dir.path());
        crate::logcheck::config_secrets(&cfg);
        let jwt = Jwt::new(&cfg.auth);
        let app = Application::build(cfg).await.expect("payd starts");
        let base = format!("http://{}", app.addr());
        TestApp {
            app: Some(app),
            base,
            client: reqwest::Client::new(),
            dir,
            config_text,
            jwt,
        }
    }

    /// The configuration text payd was started with (without `[storage]`).
    pub(crate) fn config_text(&self) -> &str {
        &self.config_text
    }

    pub(crate) fn app(&self) -> &Application {
        self.app.as_ref().expect("running")
    }

    /// Stops payd gracefully and starts it again on the same data directory.
    pub(crate) async fn restart(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
        let fresh = Self::start(self.config_text.clone(), self.dir.clone()).await;
        *self = fresh;
    }

    pub(crate) async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
        crate::logcheck::assert_clean();
    }

    pub(crate) fn token(&self, user: &str) -> String {
        let token = self.jwt.mint(user, false, now_secs(), 3600);
        crate::logcheck::secret("a user's token", &token);
        token
    }

    pub(crate) fn admin_token(&self) -> String {
        let token = self.jwt.mint("ops-admin", true, now_secs(), 3600);
        crate::logcheck::secret("an admin token", &token);
        token
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub(crate) async fn post(
        &self,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(token), body)
            .await
    }

    /// Creates an order and returns it (asserting 201).
    pub(crate) async fn order(&self, token: &str, package_id: &str, method: &str) -> Value {
        let (status, body) = self
            .post(
                "/api/v1/orders",
                token,
                Some(serde_json::json!({"package_id": package_id, "payment_method": method})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    pub(crate) async fn pay(
        &self,
        token: &str,
        order_no: &str,
        query: &str,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/api/v1/mock/orders/{order_no}/pay{query}"),
            token,
            None,
        )
        .await
    }

    pub(crate) async fn entitlements(&self, token: &str) -> Value {
        let (status, body) = self.get("/api/v1/me/entitlements", token).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Polls the order until it reaches `status` (or fails after `within`).
    pub(crate) async fn wait_for_status(
        &self,
        token: &str,
        order_no: &str,
        status: &str,
        within: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (code, body) = self.get(&format!("/api/v1/orders/{order_no}"), token).await;
            assert_eq!(code, StatusCode::OK, "{body}");
            if body["status"] == status {
                return body;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("order {order_no} did not become {status} within {within:?}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stored order record, for assertions the API does not show yet.
    /// The events of the order's timeline, oldest first, as an admin reads them.
    pub(crate) async fn timeline_events(&self, order_no: &str) -> Vec<String> {
        let (status, detail) = self
            .get(
                &format!("/api/v1/admin/orders/{order_no}"),
                &self.admin_token(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{detail}");
        detail["timeline"]
            .as_array()
            .expect("a timeline")
            .iter()
            .map(|t| t["event"].as_str().expect("an event").to_string())
            .collect()
    }

    pub(crate) fn stored_order(&self, order_no: &str) -> Order {
        let view = self.app().state().store.read().unwrap();
        view.get(&ORDERS, &order_no.to_string())
            .unwrap()
            .expect("order stored")
    }

    pub(crate) async fn stats(&self) -> SupervisorStats {
        self.app()
            .supervisor_stats()
            .await
            .expect("supervisor answers")
    }

    /// A digest of every table, to prove that a request changed nothing.
    pub(crate) fn fingerprint(&self) -> Vec<u8> {
        let view = self.app().state().store.read().unwrap();
        let mut h = Sha256::new();
        let mut tables: Vec<&str> = payd_actors::tables::DOMAIN_TABLES.to_vec();
        tables.push("mock_trades");
        for t in tables {
            h.update(t.as_bytes());
            for (k, v) in view.raw_entries(t).unwrap() {
                h.update((k.len() as u64).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
            }
        }
        h.finalize().to_vec()
    }
}

/// Git checks fixtures out readable by every user, and payd (rightly) refuses a
/// world-readable private key when mock mode is off: make the fixture keys
/// owner-only, as an operator's would be.
pub(crate) fn restrict_fixture_keys() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::os::unix::fs::PermissionsExt;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for dir in ["vectors", "wechat"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if name.contains("private") && name.ends_with(".pem") {
                    let owner_only = std::fs::Permissions::from_mode(0o400);
                    let _ = std::fs::set_permissions(entry.path(), owner_only);
                }
            }
        }
    });
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn order_no(order: &Value) -> String {
    order["order_no"].as_str().expect("order_no").to_string()
}

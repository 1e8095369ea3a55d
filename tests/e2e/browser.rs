//! The checkout page in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them), against payd
//! in mock mode. Screenshots at phone (390 px) and desktop (1280 px) width land in
//! `target/screenshots/` as test artefacts.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::support::TestApp;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PHONE: (u32, u32) = (390, 1000);
const DESKTOP: (u32, u32) = (1280, 900);

/// A chromedriver process and one browser session; both end when this is dropped.
struct Browser {
    client: Client,
    driver: Child,
    driver_url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> Browser {
    assert!(
        std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
        "the browser tests need Debian's chromium and chromium-driver: \
         apt-get install -y --no-install-recommends chromium chromium-driver (.ci/run does)"
    );
    let port = free_port();
    let driver = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let mut browser_args = vec![
        "--headless".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--disable-dev-shm-usage".into(),
        "--hide-scrollbars".into(),
        format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
    ];
    browser_args.push(format!("--user-data-dir={}", profile.path().display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": CHROMIUM, "args": browser_args}),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let client = loop {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("no WebDriver session: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let b = Browser {
        client,
        driver,
        driver_url: url,
        _profile: profile,
    };
    b.size(PHONE).await;
    b
}

impl Browser {
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .expect("script runs")
    }

    /// Waits until `condition` (a JavaScript expression) is true.
    async fn until(&self, condition: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let script = format!("return !!({condition});");
        loop {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let state = self
                    .js("return {view: document.body.dataset.view, error: document.getElementById('error').innerText, status: document.getElementById('order-status').dataset}")
                    .await;
                panic!("not true within {within:?}: {condition} (page: {state})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `css` finds, finding it again if the page re-rendered it
    /// in between (lists are rebuilt when their data arrives).
    async fn click(&self, css: &str) {
        for _ in 0..20 {
            let element = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            match element.click().await {
                Ok(()) => return,
                Err(e) if e.to_string().contains("stale element") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced");
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Sets the viewport. Desktop Chromium keeps windows at least 500 px wide, so
    /// the phone width is device emulation (through chromedriver's CDP endpoint).
    async fn size(&self, (width, height): (u32, u32)) {
        let id = self.client.session_id().await.unwrap().expect("a session");
        let command = if (width, height) == DESKTOP {
            json!({"cmd": "Emulation.clearDeviceMetricsOverride", "params": {}})
        } else {
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": true}})
        };
        let resp = reqwest::Client::new()
            .post(format!("{}/session/{id}/goog/cdp/execute", self.driver_url))
            .json(&command)
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_success(),
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// Saves the viewport as `target/screenshots/<name>-<width>.png`.
    async fn screenshot(&self, name: &str) {
        let width = self.js("return window.innerWidth").await;
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}-{width}.png")), png).unwrap();
    }
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

const SHORT: Duration = Duration::from_secs(5);

/// Signs in with the demo button and waits for the shop.
async fn demo_sign_in(b: &Browser, base: &str) {
    b.client.goto(&format!("{base}/")).await.unwrap();
    b.until("!document.getElementById('demo').hidden", SHORT)
        .await;
    b.click("#demo-signin").await;
    b.until("document.querySelector('[data-package]') !== null", SHORT)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_pays_by_qr_and_sees_success_pushed_live() {
    let app = TestApp::spawn_with_replacements(&[
        ("order_expire = \"4s\"", "order_expire = \"10m\""),
        ("qr_code_expire = \"2s\"", "qr_code_expire = \"5m\""),
        ("query_interval = \"1s\"", "query_interval = \"60s\""),
    ])
    .await;
    let b = browser().await;
    demo_sign_in(&b, &app.base).await;

    // Prices in minor units, formatted per currency.
    let basic = b.text("[data-package='basic'] .amount").await;
    assert_eq!(basic, "¥9.90");
    assert_eq!(b.text("[data-package='usd_pack'] .amount").await, "$4.99");
    b.click("[data-package='basic']").await;
    b.until(
        "document.querySelector('[data-method=\"wechat_native\"]').getAttribute('aria-checked') === 'true'",
        SHORT,
    )
    .await;
    b.screenshot("1-shop").await;

    b.click("#buy").await;
    b.until("document.body.dataset.view === 'order'", SHORT)
        .await;
    b.until("document.querySelector('#qr svg') !== null", SHORT)
        .await;
    b.until(
        "document.getElementById('live').dataset.live === 'ws'",
        SHORT,
    )
    .await;
    b.until(
        "/\\d+:\\d\\d/.test(document.getElementById('qr-countdown').textContent)",
        SHORT,
    )
    .await;
    b.until(
        "/\\d+:\\d\\d/.test(document.getElementById('order-countdown').textContent)",
        SHORT,
    )
    .await;
    assert_eq!(b.text("#order-amount").await, "¥9.90");
    let qr_link = b.js("return document.getElementById('qr-link').href").await;
    assert!(
        qr_link.as_str().unwrap().contains("/mock/pay/PD"),
        "the mock QR code points at the mock cashier: {qr_link}"
    );
    b.screenshot("2-order-qr").await;
    let load_id = b.js("return window.__payd.loadId").await;

    b.click("#simulate-pay").await;
    b.until(
        "document.getElementById('order-status').dataset.status === 'paid' && !document.getElementById('result').hidden",
        SHORT,
    )
    .await;
    // The news came over the WebSocket, into the same page load.
    assert_eq!(
        b.js("return document.getElementById('order-status').dataset.source")
            .await,
        "ws"
    );
    assert_eq!(b.js("return window.__payd.wsStatus").await, "paid");
    assert_eq!(
        b.js("return window.__payd.loadId").await,
        load_id,
        "no reload"
    );
    assert!(b.text("#result-title").await.contains("Payment received"));
    let granted = b.text("#result-granted").await;
    assert!(granted.contains("Pro membership for 30 days"), "{granted}");
    assert!(granted.contains("100 queries"), "{granted}");
    b.screenshot("3-paid").await;

    b.click("#result-entitlements").await;
    b.until("document.body.dataset.view === 'entitlements'", SHORT)
        .await;
    b.until("document.getElementById('ent-membership') !== null", SHORT)
        .await;
    let membership = b.text("#ent-membership").await;
    assert!(
        membership.contains("Pro") && membership.contains("100 queries left"),
        "{membership}"
    );
    b.screenshot("4-entitlements").await;

    b.size(DESKTOP).await;
    b.screenshot("4-entitlements").await;
    b.click("#nav-orders").await;
    b.until("document.querySelector('#orders-list li') !== null", SHORT)
        .await;
    let listed = b.text("#orders-list").await;
    assert!(
        listed.contains("Basic") && listed.contains("Paid"),
        "{listed}"
    );
    b.screenshot("5-orders").await;
    b.click("#nav-shop").await;
    b.until("document.querySelector('[data-package]') !== null", SHORT)
        .await;
    b.screenshot("1-shop").await;

    b.client.clone().close().await.unwrap();
    drop(b);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_expires_and_a_cancelled_one_says_so_on_the_page() {
    let app = TestApp::spawn_with_replacements(&[
        ("order_expire = \"4s\"", "order_expire = \"9s\""),
        ("qr_code_expire = \"2s\"", "qr_code_expire = \"3s\""),
    ])
    .await;
    let b = browser().await;

    // A token the server refuses: its problem+json detail is what the buyer reads.
    b.client.goto(&format!("{}/", app.base)).await.unwrap();
    b.until("document.body.dataset.view === 'signin'", SHORT)
        .await;
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo0MTAyNDQ0ODAwfQ.AAAA";
    b.client
        .find(Locator::Css("#token-input"))
        .await
        .unwrap()
        .send_keys(forged)
        .await
        .unwrap();
    b.click("#signin").await;
    b.until(
        "!document.getElementById('error').hidden && document.body.dataset.view === 'signin'",
        SHORT,
    )
    .await;
    let error = b.text("#error-text").await;
    assert!(error.contains("bad signature"), "{error}");
    b.screenshot("6-bad-token").await;

    demo_sign_in(&b, &app.base).await;
    b.click("[data-package='coins_100']").await;
    b.click("[data-method='alipay_qr']").await;
    b.click("#buy").await;
    b.until("document.querySelector('#qr svg') !== null", SHORT)
        .await;
    // The QR code's display expiry passes first: the page says so and can renew it.
    b.until("!document.getElementById('qr-expired').hidden", SHORT)
        .await;
    b.screenshot("7-qr-expired").await;
    let before = b
        .js("return document.getElementById('qr-countdown').textContent")
        .await;
    assert_eq!(before, "0:00");
    b.click("#refresh-qr").await;
    b.until(
        "document.getElementById('qr-expired').hidden && document.getElementById('qr-countdown').textContent !== '0:00'",
        SHORT,
    )
    .await;
    // Then the order itself runs out.
    b.until(
        "document.getElementById('order-status').dataset.status === 'expired'",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(b.text("#result-title").await, "Order expired");
    assert!(
        b.js("return document.getElementById('pending').hidden")
            .await
            == true
    );
    b.screenshot("8-expired").await;

    // A redirect method, then cancel.
    b.click("#nav-shop").await;
    b.until("document.querySelector('[data-package]') !== null", SHORT)
        .await;
    b.click("[data-package='basic']").await;
    b.click("[data-method='alipay_page']").await;
    b.click("#buy").await;
    b.until("!document.getElementById('pay-redirect').hidden", SHORT)
        .await;
    let pay_url = b
        .js("return document.getElementById('pay-link').href")
        .await;
    assert!(
        pay_url.as_str().unwrap().contains("/mock/pay/PD"),
        "{pay_url}"
    );
    b.size(DESKTOP).await;
    b.screenshot("9-redirect").await;
    b.click("#cancel").await;
    b.until(
        "document.getElementById('order-status').dataset.status === 'cancelled'",
        SHORT,
    )
    .await;
    assert_eq!(b.text("#result-title").await, "Order cancelled");
    b.screenshot("10-cancelled").await;
    b.size(PHONE).await;
    b.screenshot("10-cancelled").await;

    b.client.clone().close().await.unwrap();
    drop(b);
    app.stop().await;
}

//! Stopping and starting payd on the same data directory loses nothing.

use std::time::Duration;

use reqwest::StatusCode;

use crate::support::{TestApp, order_no};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_paid_orders_fires_deadlines_and_grants_nothing_twice() {
    let mut app = TestApp::spawn().await;
    let u = app.token("olga");
    let paid = order_no(&app.order(&u, "basic", "mock").await);
    app.pay(&u, &paid, "").await;
    let to_expire = order_no(&app.order(&u, "basic", "mock").await);
    let paid_silently = order_no(&app.order(&u, "coins_100", "mock").await);
    let (status, _) = app.pay(&u, &paid_silently, "?notify=false").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let before = app.entitlements(&u).await;

    app.restart().await;
    let u = app.token("olga");

    let (_, still_paid) = app.get(&format!("/api/v1/orders/{paid}"), &u).await;
    assert_eq!(still_paid["status"], "paid");
    assert_eq!(
        app.entitlements(&u).await["membership"],
        before["membership"]
    );
    // Deadlines stored before the restart still fire after it.
    app.wait_for_status(&u, &to_expire, "expired", Duration::from_secs(10))
        .await;
    app.wait_for_status(&u, &paid_silently, "paid", Duration::from_secs(10))
        .await;
    let after = app.entitlements(&u).await;
    assert_eq!(
        after["membership"]["queries_remaining"], 100,
        "granted once"
    );
    assert_eq!(after["points"], 110);

    // And once more: nothing is granted again on a second restart.
    app.restart().await;
    let u = app.token("olga");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.entitlements(&u).await["points"], 110);
    let (_, list) = app.get("/api/v1/orders", &u).await;
    assert_eq!(list["total"], 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_refused_with_503_changes_nothing_and_recovers_after_reopen() {
    let app = TestApp::spawn_with_replacements(&[
        ("order_expire = \"4s\"", "order_expire = \"60s\""),
        ("query_interval = \"1s\"", "query_interval = \"30s\""),
    ])
    .await;
    let u = app.token("pete");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = app.fingerprint();
    let store = app.app().state().store.clone();
    store.hold_reopen(true);
    store.fail_next_commits(1);
    let (status, body) = app.pay(&u, &no, "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("storage_unavailable")),
        "{body}"
    );
    // Not ready, and no further write is acknowledged while the disk stays broken.
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = app
        .post(
            "/api/v1/orders",
            &u,
            Some(serde_json::json!({"package_id": "basic", "payment_method": "mock"})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The disk comes back: the database is reopened and nothing half-written remains.
    store.hold_reopen(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !store.is_healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "storage never reopened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.fingerprint(),
        before,
        "a refused write left something behind"
    );
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let (status, paid) = app.pay(&u, &no, "").await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    app.stop().await;
}

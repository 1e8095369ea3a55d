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

//! An order's life: cancel, QR re-issue, expiry, polling, and the actors behind it
//! (passivation, restart after a panic, quarantine).

use std::time::Duration;

use payd_actors::order::supervisor::SupervisorMsg;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{TestApp, order_no};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_final_and_a_payment_after_it_follows_the_late_payment_rule() {
    let app = TestApp::spawn().await;
    let u = app.token("gina");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    let (status, cancelled) = app
        .post(&format!("/api/v1/orders/{no}/cancel"), &u, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["cancelled_at"].is_string());
    let (status, again) = app
        .post(&format!("/api/v1/orders/{no}/cancel"), &u, None)
        .await;
    assert_eq!(
        (status, again["code"].as_str()),
        (StatusCode::CONFLICT, Some("order_not_cancellable"))
    );
    // The buyer had paid just before the close reached the provider: grant (default).
    let (_, late) = app.pay(&u, &no, "").await;
    assert_eq!(late["status"], "paid");
    assert_eq!(late["late_payment"], true);
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_reissue_extends_the_code_for_the_same_trade_but_never_past_expiry() {
    let app = TestApp::spawn().await;
    let u = app.token("hank");
    let order = app.order(&u, "basic", "mock").await;
    let no = order_no(&order);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, fresh) = app.post(&format!("/api/v1/orders/{no}/qr"), &u, None).await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(
        fresh["qr_code_url"], order["qr_code_url"],
        "same provider trade"
    );
    assert!(fresh["qr_code_expire_at"].as_str() > order["qr_code_expire_at"].as_str());
    assert!(fresh["qr_code_expire_at"].as_str() <= fresh["expire_at"].as_str());
    app.pay(&u, &no, "").await;
    let (status, body) = app.post(&format!("/api/v1/orders/{no}/qr"), &u, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("order_not_pending"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_order_expires_and_is_closed_at_the_provider() {
    let app = TestApp::spawn().await;
    let u = app.token("ivy");
    let store = app.app().state().store.clone();
    let before = store.stats();
    let no = order_no(&app.order(&u, "basic", "mock").await);
    let expired = app
        .wait_for_status(&u, &no, "expired", Duration::from_secs(10))
        .await;
    assert_eq!(expired["late_payment"], false);
    // The whole sequence is in the history: expiry, query, close, query …
    assert_eq!(
        app.timeline_events(&no).await,
        [
            "created",
            "trade_opened",
            "order_expired",
            "query_result",
            "close_result",
            "query_result"
        ]
    );
    // … but the mock answers inside payd's own storage, so each deadline took one
    // storage command: the create, two polls (1 s and 3 s after it) and the expiry
    // (4 s) with its query, close and query.
    let after = store.stats();
    assert_eq!(
        after.commands - before.commands,
        4,
        "{before:?} → {after:?}"
    );
    let view = app.app().state().store.read().unwrap();
    let trade = view
        .get(&payd::providers::mock::MOCK_TRADES, &no)
        .unwrap()
        .unwrap();
    assert_eq!(trade.state, payd::providers::mock::MockTradeState::Closed);
    drop(view);
    // No deadline is left behind for a final order.
    assert!(app.stored_order(&no).timers.iter().next().is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_finds_a_payment_whose_callback_never_came() {
    let app = TestApp::spawn().await;
    let u = app.token("jack");
    let no = order_no(&app.order(&u, "coins_100", "mock").await);
    let (status, body) = app.pay(&u, &no, "?notify=false").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        body["status"], "pending",
        "no callback: payd does not know yet"
    );
    // The first poll comes query_interval (1 s) after creation.
    let paid = app
        .wait_for_status(&u, &no, "paid", Duration::from_secs(3))
        .await;
    assert_eq!(paid["late_payment"], false);
    assert_eq!(app.entitlements(&u).await["points"], 110);
    assert_eq!(
        app.stored_order(&no).payments[0].source,
        payd_actors::model::PaymentSource::Query
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_failure_fails_the_order() {
    let app = TestApp::spawn().await;
    let u = app.token("kate");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    let (status, failed) = app
        .post(&format!("/api/v1/mock/orders/{no}/fail"), &u, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failure_reason"], "payment_failed");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_actor_is_passivated_and_reactivated_by_a_later_request() {
    let app = TestApp::spawn_with_replacements(&[
        ("order_expire = \"4s\"", "order_expire = \"60s\""),
        ("query_interval = \"1s\"", "query_interval = \"30s\""),
    ])
    .await;
    let u = app.token("leo");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    // The mock opens its trade with the order: no actor was needed for that.
    assert_eq!(app.stats().await.live_actors, 0);
    // A fresh QR code is the order actor's work: it is activated for it.
    let (status, _) = app.post(&format!("/api/v1/orders/{no}/qr"), &u, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.stats().await.live_actors, 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.stats().await.live_actors > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "actor never passivated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = app.stats().await;
    assert_eq!(stats.passivations, 1);
    // Still readable and payable: the next request activates it from storage.
    let (status, _) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(status, StatusCode::OK);
    let (_, paid) = app.pay(&u, &no, "").await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(app.stats().await.activations, stats.activations + 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_order_actor_is_restarted_and_its_order_continues() {
    let app =
        TestApp::spawn_with_replacements(&[("order_expire = \"4s\"", "order_expire = \"60s\"")])
            .await;
    let u = app.token("mia");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    app.app()
        .state()
        .supervisor
        .cast(SupervisorMsg::InjectPanic(no.clone()))
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.stats().await.restarts == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "actor never restarted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, paid) = app.pay(&u, &no, "").await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        100
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_that_keeps_panicking_is_quarantined() {
    let app =
        TestApp::spawn_with_replacements(&[("order_expire = \"4s\"", "order_expire = \"60s\"")])
            .await;
    let u = app.token("ned");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    for round in 1..=4u64 {
        app.app()
            .state()
            .supervisor
            .cast(SupervisorMsg::InjectPanic(no.clone()))
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let s = app.stats().await;
            if s.restarts >= round.min(3) && (round < 4 || !s.quarantined.is_empty()) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stats = app.stats().await;
    assert_eq!(stats.restarts, 3);
    assert_eq!(stats.quarantined, vec![no.clone()]);
    let (status, body) = app.pay(&u, &no, "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("order_quarantined"))
    );
    // Reads still work for a quarantined order.
    let (status, order) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(
        (status, &order["status"]),
        (StatusCode::OK, &json!("pending"))
    );
    app.stop().await;
}

//! Races and storms: many duplicate callbacks at once, and cancel racing payment
//! racing expiry — money is never lost and never credited twice.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestApp, order_no};
use crate::wechat_sandbox::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_repeated_signed_callbacks_grants_each_order_exactly_once() {
    let sandbox = WechatSandbox::start().await;
    let wechat = payd_config(&sandbox);
    // Polling runs meanwhile (every second), racing the callbacks.
    let app = TestApp::spawn_real(
        &[("order_expire = \"4s\"", "order_expire = \"60s\"")],
        &wechat,
    )
    .await;
    let orders = 500;
    let mut users = Vec::new();
    let mut deliveries = Vec::new();
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..orders {
        let user = format!("storm-{}", i % 20);
        let token = app.token(&user);
        let no = order_no(&app.order(&token, "coins_100", "wechat").await);
        sandbox.pay(&no, None);
        let tx = sandbox.transaction_json(&no);
        let (body, headers) = sandbox.notification_for(&format!("EV-storm-{no}"), &tx);
        for _ in 0..(1 + next() % 10) {
            deliveries.push((body.clone(), headers.clone()));
        }
        users.push((user, token));
    }
    // Shuffle, then deliver with 16 in flight: copies of one event arrive concurrently.
    for i in (1..deliveries.len()).rev() {
        let j = (next() as usize) % (i + 1);
        deliveries.swap(i, j);
    }
    let total = deliveries.len();
    let url = format!("{}/api/v1/notify/wechat", app.base);
    let client = app.client.clone();
    let statuses: Vec<StatusCode> = futures_util::stream::iter(deliveries)
        .map(|(body, headers)| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let mut req = client
                    .post(url)
                    .body(body)
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                req.send().await.unwrap().status()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::NO_CONTENT),
        "every delivery gets WeChat's success reply"
    );
    // Exactly one grant per order: 500 orders × 110 points.
    let mut points = 0;
    users.sort();
    users.dedup_by(|a, b| a.0 == b.0);
    for (_, token) in &users {
        points += app.entitlements(token).await["points"].as_u64().unwrap();
    }
    println!("storm: {orders} orders, {total} deliveries, {points} points granted");
    assert_eq!(points, orders as u64 * 110);
    app.stop().await;
}

use futures_util::StreamExt;

/// One round: cancel and pay released together, with the expiry close behind them.
async fn race_round(app: &TestApp, token: &str) -> (Value, Value) {
    let no = order_no(&app.order(token, "coins_100", "mock").await);
    let cancel_path = format!("/api/v1/orders/{no}/cancel");
    let cancel = app.post(&cancel_path, token, None);
    let pay = app.pay(token, &no, "");
    let ((cs, cancelled), (ps, paid)) = tokio::join!(cancel, pay);
    assert!(
        cs == StatusCode::OK || cs == StatusCode::CONFLICT,
        "{cancelled}"
    );
    assert_eq!(ps, StatusCode::OK, "{paid}");
    let (_, now) = app.get(&format!("/api/v1/orders/{no}"), token).await;
    (now, paid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_payment_follows_the_late_payment_policy_every_time() {
    // Grant policy: whichever wins, the money ends as a paid, granted order.
    let app =
        TestApp::spawn_with_replacements(&[("order_expire = \"4s\"", "order_expire = \"2s\"")])
            .await;
    let token = app.token("racer");
    let rounds = 150;
    let (mut late, mut on_time) = (0, 0);
    for _ in 0..rounds {
        let (order, _) = race_round(&app, &token).await;
        assert_eq!(order["status"], "paid", "{order}");
        if order["late_payment"] == true {
            late += 1;
        } else {
            on_time += 1;
        }
    }
    assert_eq!(app.entitlements(&token).await["points"], rounds * 110);
    println!(
        "race (grant): {rounds} rounds, {on_time} paid before the cancel, {late} after (late payments)"
    );
    app.stop().await;

    // Refund policy: a payment after the cancel is refunded and grants nothing.
    let app =
        TestApp::spawn_with_replacements(&[("[payment]", "[payment]\nlate_payment = \"refund\"")])
            .await;
    let token = app.token("racer");
    let admin = app.admin_token();
    let (mut granted, mut refunded) = (0u64, 0u64);
    let mut refunded_orders = Vec::new();
    for _ in 0..rounds {
        let (order, _) = race_round(&app, &token).await;
        match order["status"].as_str() {
            Some("paid") => granted += 1,
            Some("cancelled") => {
                refunded += 1;
                refunded_orders.push(order_no(&order));
            }
            other => panic!("unexpected {other:?}: {order}"),
        }
    }
    // Every late payment's refund completes; nothing is lost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for no in &refunded_orders {
        loop {
            let (_, list) = app
                .get(&format!("/api/v1/admin/orders/{no}/refunds"), &admin)
                .await;
            if list["items"][0]["status"] == "succeeded" {
                assert_eq!(list["items"][0]["amount"], 990);
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{no}: {list}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(
        app.entitlements(&token).await["points"].as_u64().unwrap(),
        granted * 110
    );
    println!(
        "race (refund): {rounds} rounds, {granted} paid before the cancel, {refunded} refunded after it"
    );
    app.stop().await;
}

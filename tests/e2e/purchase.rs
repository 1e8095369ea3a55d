//! Buying things: the whole mock purchase, duplicates, double payments, mismatches.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{TestApp, order_no};
use payd_actors::model::{AnomalyKind, PaymentDisposition};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_purchase_grants_the_membership_once() {
    let app = TestApp::spawn().await;
    let alice = app.token("alice");
    let (status, packages) = app.get("/api/v1/packages", &alice).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = packages["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["basic", "premium", "coins_100", "usd_pack", "whale"],
        "active only, by sort_order"
    );

    let order = app.order(&alice, "basic", "wechat").await;
    assert_eq!(order["status"], "pending");
    assert_eq!(order["payment_method"], "wechat_native");
    assert_eq!(order["provider"], "mock");
    assert_eq!(order["amount"], 990);
    let no = order_no(&order);
    assert_eq!(no.len(), 30);
    assert!(
        order["qr_code_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mock/pay/{no}"))
    );

    let (status, paid) = app.pay(&alice, &no, "").await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert_eq!(paid["status"], "paid");
    assert!(paid["provider_transaction_id"].as_str().is_some());
    let ent = app.entitlements(&alice).await;
    assert_eq!(ent["membership"]["type"], "pro");
    assert_eq!(ent["membership"]["queries_remaining"], 100);

    // A second membership extends the first; a higher tier replaces it.
    let second = app.order(&alice, "premium", "alipay").await;
    app.pay(&alice, &order_no(&second), "").await;
    let ent2 = app.entitlements(&alice).await;
    assert_eq!(ent2["membership"]["type"], "premium");
    assert_eq!(ent2["membership"]["queries_remaining"], 600);
    assert!(ent2["membership"]["expires_at"].as_str() > ent["membership"]["expires_at"].as_str());

    // Someone else sees none of it.
    let bob = app.token("bob");
    assert_eq!(app.entitlements(&bob).await["membership"], json!(null));
    let (status, body) = app.get(&format!("/api/v1/orders/{no}"), &bob).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_purchase_grants_paid_and_bonus_points() {
    let app = TestApp::spawn().await;
    let u = app.token("carol");
    let order = app.order(&u, "coins_100", "mock").await;
    let (_, paid) = app.pay(&u, &order_no(&order), "").await;
    assert_eq!(paid["status"], "paid");
    let ent = app.entitlements(&u).await;
    assert_eq!(
        (
            ent["points"].as_u64(),
            ent["paid_points"].as_u64(),
            ent["bonus_points"].as_u64()
        ),
        (Some(110), Some(100), Some(10))
    );
    assert_eq!(ent["membership"], json!(null));
    let (status, list) = app.get("/api/v1/orders?status=paid", &u).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["order_no"], order["order_no"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_confirmation_changes_nothing_and_a_second_transaction_is_a_double_payment() {
    let app = TestApp::spawn().await;
    let u = app.token("dave");
    let no = order_no(&app.order(&u, "coins_100", "mock").await);
    let (_, first) = app.pay(&u, &no, "").await;
    // The same transaction delivered again: success, nothing changes.
    let (status, again) = app.pay(&u, &no, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);
    // A different transaction on a paid order: recorded, not granted again.
    let (status, double) = app.pay(&u, &no, "?transaction_id=SECOND-TX").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(double["status"], "paid");
    assert_eq!(
        double["provider_transaction_id"],
        first["provider_transaction_id"]
    );
    assert_eq!(app.entitlements(&u).await["points"], 110);
    let stored = app.stored_order(&no);
    assert_eq!(stored.payments.len(), 2);
    assert_eq!(
        stored.payments[1].disposition,
        PaymentDisposition::DoublePayment
    );
    assert_eq!(stored.anomalies[0].kind, AnomalyKind::DoublePayment);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_amount_is_an_anomaly_and_grants_nothing() {
    let app = TestApp::spawn().await;
    let u = app.token("erin");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    let (status, order) = app.pay(&u, &no, "?amount=989").await;
    assert_eq!(status, StatusCode::OK, "acknowledged to the provider");
    assert_eq!(order["status"], "failed");
    assert_eq!(order["failure_reason"], "amount_mismatch");
    assert_eq!(app.entitlements(&u).await["membership"], json!(null));
    let stored = app.stored_order(&no);
    assert_eq!(stored.anomalies.len(), 1);
    assert_eq!(stored.anomalies[0].kind, AnomalyKind::AmountMismatch);
    assert_eq!(stored.anomalies[0].amount_minor, 989);
    // Wrong currency, same rule.
    let no2 = order_no(&app.order(&u, "basic", "mock").await);
    let (_, order2) = app.pay(&u, &no2, "?currency=USD").await;
    assert_eq!(order2["failure_reason"], "amount_mismatch");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_idempotency_key_create_one_order() {
    let app = TestApp::spawn().await;
    let u = app.token("frank");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = app.client.clone();
        let url = format!("{}/api/v1/orders", app.base);
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(u)
                .header("Idempotency-Key", "key-1")
                .json(&json!({"package_id": "basic", "payment_method": "mock"}))
                .send()
                .await
                .unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (
                r.status(),
                replayed,
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    let mut created = std::collections::HashSet::new();
    for t in tasks {
        let (status, replayed, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                created.insert(body["order_no"].as_str().unwrap().to_string());
            }
            StatusCode::CONFLICT => assert_eq!(body["code"], "idempotency_key_in_use"),
            other => panic!("unexpected {other}: {body}"),
        }
        let _ = replayed;
    }
    assert_eq!(created.len(), 1, "one order for one key");
    // Afterwards the key replays the first answer.
    let r = app
        .client
        .post(format!("{}/api/v1/orders", app.base))
        .bearer_auth(&u)
        .header("Idempotency-Key", "key-1")
        .json(&json!({"package_id": "basic", "payment_method": "MOCK"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(created.contains(body["order_no"].as_str().unwrap()));
    let (_, list) = app.get("/api/v1/orders", &u).await;
    assert_eq!(list["total"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_order_is_stored_with_its_open_trade_in_one_durable_write() {
    let app = TestApp::spawn().await;
    let u = app.token("olga");
    let store = app.app().state().store.clone();
    let before = store.stats();
    let order = app.order(&u, "coins_100", "mock").await;
    let after = store.stats();
    // One storage command answers the request: the order and its opened trade.
    assert_eq!(
        after.commands - before.commands,
        1,
        "{before:?} → {after:?}"
    );
    let no = order_no(&order);
    assert!(
        order["qr_code_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/mock/pay/{no}"))
    );
    // The history still shows both steps, and the trade is payable.
    assert_eq!(app.timeline_events(&no).await, ["created", "trade_opened"]);
    let stored = app.stored_order(&no);
    assert!(stored.trade_opened);
    assert_eq!(stored.version, 1);
    let (status, paid) = app.pay(&u, &no, "").await;
    assert_eq!((status, &paid["status"]), (StatusCode::OK, &json!("paid")));
    app.stop().await;
}

//! Spending entitlements: atomic, idempotent, never overspent; and their history.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, order_no};

async fn consume(app: &TestApp, token: &str, key: &str, body: Value) -> (StatusCode, Value, bool) {
    let r = app
        .client
        .post(format!("{}/api/v1/me/entitlements/consume", app.base))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (r.status(), r.json().await.unwrap(), replayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consuming_spends_bonus_first_once_per_key_and_never_overspends() {
    let app = TestApp::spawn().await;
    let u = app.token("ursula");
    let no = order_no(&app.order(&u, "coins_100", "mock").await);
    app.pay(&u, &no, "").await;

    let (status, ent, replayed) = consume(&app, &u, "c1", json!({"points": 15})).await;
    assert_eq!(status, StatusCode::OK, "{ent}");
    assert!(!replayed);
    assert_eq!(
        (
            ent["points"].as_u64(),
            ent["bonus_points"].as_u64(),
            ent["paid_points"].as_u64()
        ),
        (Some(95), Some(0), Some(95))
    );
    // The same key again debits nothing and answers the same.
    let (status, again, replayed) = consume(&app, &u, "c1", json!({"points": 15})).await;
    assert_eq!((status, replayed), (StatusCode::OK, true));
    assert_eq!(again, ent);
    let (status, body, _) = consume(&app, &u, "c1", json!({"points": 16})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("idempotency_key_reused")
        )
    );
    let (status, body, _) = consume(&app, &u, "c2", json!({"points": 1000})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_entitlement"))
    );
    let (status, body, _) = consume(&app, &u, "c3", json!({"queries": 1})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_entitlement")),
        "no membership"
    );
    for (bad, what) in [
        (json!({}), "nothing"),
        (json!({"points": -1}), "negative"),
        (json!({"points": 1.5}), "fractional"),
        (json!({"points": "1"}), "string"),
        (json!({"points": 1, "user_id": "x"}), "mass assignment"),
    ] {
        let (status, body, _) = consume(&app, &u, "c4", bad).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{what}"
        );
    }
    let r = app
        .client
        .post(format!("{}/api/v1/me/entitlements/consume", app.base))
        .bearer_auth(&u)
        .json(&json!({"points": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "Idempotency-Key is required"
    );

    // Twenty concurrent spends of 10 from 95: exactly 9 succeed.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (client, base, u) = (app.client.clone(), app.base.clone(), u.clone());
        tasks.push(tokio::spawn(async move {
            client
                .post(format!("{base}/api/v1/me/entitlements/consume"))
                .bearer_auth(u)
                .header("Idempotency-Key", format!("burst-{i}"))
                .json(&json!({"points": 10}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 9);
    assert_eq!(app.entitlements(&u).await["points"], 5);

    let (status, history) = app
        .get("/api/v1/me/entitlements/history?page_size=100", &u)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(history["total"], 11, "1 grant + 10 consumes: {history}");
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.last().unwrap()["change"], "grant");
    assert_eq!(items.last().unwrap()["order_no"], no.as_str());
    assert_eq!(items.last().unwrap()["points"], 100);
    assert_eq!(items.last().unwrap()["bonus_points"], 10);
    assert_eq!(items[0]["change"], "consume");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_spent_from_the_active_membership() {
    let app = TestApp::spawn().await;
    let u = app.token("vera");
    let no = order_no(&app.order(&u, "basic", "mock").await);
    app.pay(&u, &no, "").await;
    let (status, ent, _) = consume(&app, &u, "q1", json!({"queries": 3})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ent["membership"]["queries_remaining"], 97);
    let (status, _, _) = consume(&app, &u, "q2", json!({"queries": 98})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        app.entitlements(&u).await["membership"]["queries_remaining"],
        97
    );
    app.stop().await;
}

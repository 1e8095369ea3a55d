//! Refunds and the admin API: refund records with their own state, holds and
//! clawbacks of the entitlement, automatic refunds, the anomaly queue, the audit log.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, order_no};

async fn refund(
    app: &TestApp,
    admin: &str,
    no: &str,
    body: Value,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .post(format!("{}/api/v1/admin/orders/{no}/refunds", app.base))
        .bearer_auth(admin)
        .json(&body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn wait_refund(app: &TestApp, admin: &str, no: &str, refund_no: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = app
            .get(&format!("/api/v1/admin/orders/{no}/refunds"), admin)
            .await;
        if let Some(r) = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["refund_no"] == refund_no)
            && r["status"] == status
        {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refund {refund_no} never {status}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn paid_order(app: &TestApp, token: &str, package: &str) -> String {
    let no = order_no(&app.order(token, package, "mock").await);
    let (_, o) = app.pay(token, &no, "").await;
    assert_eq!(o["status"], "paid");
    no
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_refund_claws_back_the_membership() {
    let app = TestApp::spawn().await;
    let (u, admin) = (app.token("wendy"), app.admin_token());
    let no = paid_order(&app, &u, "basic").await;
    let before = app.entitlements(&u).await;
    let (status, r) = refund(
        &app,
        &admin,
        &no,
        json!({"reason": "customer asked"}),
        Some("rf-1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(
        (r["amount"].as_i64(), r["status"].as_str()),
        (Some(990), Some("processing"))
    );
    wait_refund(
        &app,
        &admin,
        &no,
        r["refund_no"].as_str().unwrap(),
        "succeeded",
    )
    .await;
    let order = app
        .wait_for_status(&u, &no, "refunded", Duration::from_secs(3))
        .await;
    assert_eq!(order["refunded_amount"], 990);
    let after = app.entitlements(&u).await;
    // The membership loses its 30 days (so it has lapsed) and its 100 queries.
    assert_ne!(after["membership"], before["membership"]);
    assert_eq!(after["membership"], Value::Null, "{after}");
    // The same request again with its key: the first answer, no second refund.
    let (status, again) = refund(
        &app,
        &admin,
        &no,
        json!({"reason": "customer asked"}),
        Some("rf-1"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again["refund_no"], r["refund_no"]);
    let (status, body) = refund(&app, &admin, &no, json!({"reason": "again"}), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("order_not_refundable"))
    );
    let (_, history) = app.get("/api/v1/me/entitlements/history", &u).await;
    let changes: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["refund_clawback", "refund_hold", "grant"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_refunds_take_back_their_share_of_points_and_bonus_and_never_exceed_the_payment() {
    let app = TestApp::spawn().await;
    let (u, admin) = (app.token("xena"), app.admin_token());
    let no = paid_order(&app, &u, "coins_100").await;
    let (status, r1) = refund(
        &app,
        &admin,
        &no,
        json!({"amount": 495, "reason": "half"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{r1}");
    wait_refund(
        &app,
        &admin,
        &no,
        r1["refund_no"].as_str().unwrap(),
        "succeeded",
    )
    .await;
    app.wait_for_status(&u, &no, "partially_refunded", Duration::from_secs(3))
        .await;
    let ent = app.entitlements(&u).await;
    assert_eq!(
        (ent["paid_points"].as_u64(), ent["bonus_points"].as_u64()),
        (Some(50), Some(5))
    );
    let (status, body) = refund(
        &app,
        &admin,
        &no,
        json!({"amount": 496, "reason": "too much"}),
        None,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("refund_exceeds_paid")),
        "{body}"
    );
    let (status, r2) = refund(&app, &admin, &no, json!({"reason": "the rest"}), None).await;
    assert_eq!(
        (status, r2["amount"].as_i64()),
        (StatusCode::CREATED, Some(495))
    );
    wait_refund(
        &app,
        &admin,
        &no,
        r2["refund_no"].as_str().unwrap(),
        "succeeded",
    )
    .await;
    app.wait_for_status(&u, &no, "refunded", Duration::from_secs(3))
        .await;
    assert_eq!(app.entitlements(&u).await["points"], 0);
    // Spent points are not clawed below zero: a shortfall is an anomaly.
    let no2 = paid_order(&app, &u, "coins_100").await;
    let r = app
        .client
        .post(format!("{}/api/v1/me/entitlements/consume", app.base))
        .bearer_auth(&u)
        .header("Idempotency-Key", "spend-all")
        .json(&json!({"points": 110}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, r3) = refund(
        &app,
        &admin,
        &no2,
        json!({"reason": "after spending"}),
        None,
    )
    .await;
    wait_refund(
        &app,
        &admin,
        &no2,
        r3["refund_no"].as_str().unwrap(),
        "succeeded",
    )
    .await;
    assert_eq!(app.entitlements(&u).await["points"], 0);
    let (_, anomalies) = app.get("/api/v1/admin/anomalies", &admin).await;
    assert!(
        anomalies["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "clawback_shortfall" && a["order_no"] == no2.as_str()),
        "{anomalies}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_refunds_that_together_exceed_the_payment_let_exactly_one_through() {
    let app = TestApp::spawn().await;
    let (u, admin) = (app.token("yuri"), app.admin_token());
    let no = paid_order(&app, &u, "basic").await;
    let a = refund(
        &app,
        &admin,
        &no,
        json!({"amount": 600, "reason": "a"}),
        None,
    );
    let b = refund(
        &app,
        &admin,
        &no,
        json!({"amount": 600, "reason": "b"}),
        None,
    );
    let ((sa, ba), (sb, bb)) = tokio::join!(a, b);
    let mut statuses = vec![sa, sb];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![StatusCode::CREATED, StatusCode::CONFLICT],
        "{ba} {bb}"
    );
    app.wait_for_status(&u, &no, "partially_refunded", Duration::from_secs(3))
        .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_the_provider_declines_releases_the_hold_and_opens_an_anomaly() {
    let app = TestApp::spawn().await;
    let (u, admin) = (app.token("zoe"), app.admin_token());
    let no = paid_order(&app, &u, "coins_100").await;
    let (status, r) = refund(
        &app,
        &admin,
        &no,
        json!({"reason": "test mock-decline"}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let failed = wait_refund(
        &app,
        &admin,
        &no,
        r["refund_no"].as_str().unwrap(),
        "failed",
    )
    .await;
    assert_eq!(failed["failure_reason"], "mock refund declined");
    let (_, order) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(
        (order["status"].as_str(), order["refunded_amount"].as_i64()),
        (Some("paid"), Some(0))
    );
    assert_eq!(app.entitlements(&u).await["points"], 110, "hold released");
    let (_, anomalies) = app.get("/api/v1/admin/anomalies?status=open", &admin).await;
    assert!(
        anomalies["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "refund_abnormal")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_payment_under_the_refund_policy_is_refunded_automatically_and_granted_nothing() {
    let app =
        TestApp::spawn_with_replacements(&[("[payment]", "[payment]\nlate_payment = \"refund\"")])
            .await;
    let (u, admin) = (app.token("adam"), app.admin_token());
    let no = order_no(&app.order(&u, "coins_100", "mock").await);
    app.post(&format!("/api/v1/orders/{no}/cancel"), &u, None)
        .await;
    let (status, order) = app.pay(&u, &no, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["status"], "cancelled");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = app
            .get(&format!("/api/v1/admin/orders/{no}/refunds"), &admin)
            .await;
        if list["items"][0]["status"] == "succeeded" {
            assert_eq!(list["items"][0]["amount"], 990);
            assert!(list["items"][0]["transaction_id"].is_string());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.entitlements(&u).await["points"], 0);
    let (_, detail) = app.get(&format!("/api/v1/admin/orders/{no}"), &admin).await;
    assert_eq!(detail["anomalies"][0]["kind"], "late_payment_refund");
    assert_eq!(detail["anomalies"][0]["status"], "resolved");
    // A double payment is refunded the same way.
    let paid = paid_order(&app, &u, "coins_100").await;
    app.pay(&u, &paid, "?transaction_id=SECOND").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = app
            .get(&format!("/api/v1/admin/orders/{paid}/refunds"), &admin)
            .await;
        if list["items"][0]["status"] == "succeeded" {
            assert_eq!(list["items"][0]["transaction_id"], "SECOND");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, order) = app.get(&format!("/api/v1/orders/{paid}"), &u).await;
    assert_eq!(
        (order["status"].as_str(), order["refunded_amount"].as_i64()),
        (Some("paid"), Some(0))
    );
    assert_eq!(app.entitlements(&u).await["points"], 110);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_the_admin_role_and_are_audited() {
    let app = TestApp::spawn().await;
    let (u, admin) = (app.token("bert"), app.admin_token());
    for path in [
        "/api/v1/admin/orders",
        "/api/v1/admin/anomalies",
        "/api/v1/admin/audit",
    ] {
        let (status, body) = app.get(path, &u).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{path}"
        );
        let (status, _) = app.call(reqwest::Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let no = paid_order(&app, &u, "basic").await;
    let (status, _) = refund(&app, &u, &no, json!({"reason": "x"}), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A wrong amount, resolved by completing it; another dismissed.
    let short = order_no(&app.order(&u, "coins_100", "mock").await);
    app.pay(&u, &short, "?amount=900").await;
    let (_, open) = app.get("/api/v1/admin/anomalies", &admin).await;
    let id = open["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["order_no"] == short.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, resolved) = app
        .post(
            &format!("/api/v1/admin/anomalies/{id}/resolve"),
            &admin,
            Some(
                json!({"action": "complete", "reason": "customer paid the rest by bank transfer"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["status"], "resolved");
    let (_, order) = app.get(&format!("/api/v1/orders/{short}"), &u).await;
    assert_eq!(order["status"], "paid");
    assert_eq!(app.entitlements(&u).await["points"], 110);
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/anomalies/{id}/resolve"),
            &admin,
            Some(json!({"action": "dismiss", "reason": "again"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // Force-complete an order whose payment was verified by hand: granted once.
    let manual = order_no(&app.order(&u, "coins_100", "mock").await);
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/orders/{manual}/complete"),
            &admin,
            Some(json!({"reason": ""})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed"))
    );
    let (status, done) = app
        .post(
            &format!("/api/v1/admin/orders/{manual}/complete"),
            &admin,
            Some(json!({"reason": "wire transfer seen"})),
        )
        .await;
    assert_eq!(
        (status, done["status"].as_str()),
        (StatusCode::OK, Some("paid"))
    );
    let (status, _) = app
        .post(
            &format!("/api/v1/admin/orders/{manual}/complete"),
            &admin,
            Some(json!({"reason": "twice"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(app.entitlements(&u).await["points"], 220);

    // Partial refund, then the order's timeline tells the story.
    let (_, r) = refund(
        &app,
        &admin,
        &no,
        json!({"amount": 100, "reason": "goodwill"}),
        None,
    )
    .await;
    wait_refund(
        &app,
        &admin,
        &no,
        r["refund_no"].as_str().unwrap(),
        "succeeded",
    )
    .await;
    let (_, detail) = app.get(&format!("/api/v1/admin/orders/{no}"), &admin).await;
    let steps: Vec<(String, String)> = detail["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["from"] != t["to"])
        .map(|t| {
            (
                t["from"].as_str().unwrap().to_string(),
                t["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("pending".to_string(), "paid".to_string()),
            ("paid".to_string(), "partially_refunded".to_string())
        ],
        "{detail}"
    );
    assert_eq!(detail["refunds"][0]["amount"], 100);
    assert_eq!(
        detail["source_ip"], "127.0.0.1",
        "the address the order came from"
    );
    assert_eq!(detail["payments"][0]["amount"], 990);

    // Filters and pagination.
    let (_, page) = app
        .get(
            "/api/v1/admin/orders?user_id=bert&status=paid&page_size=1",
            &admin,
        )
        .await;
    assert_eq!(
        (
            page["total"].as_u64(),
            page["items"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    let (_, by_method) = app
        .get("/api/v1/admin/orders?payment_method=wechat_native", &admin)
        .await;
    assert_eq!(by_method["total"], 0);
    let (status, _) = app.get("/api/v1/admin/orders?from=yesterday", &admin).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (_, audit) = app.get("/api/v1/admin/audit?page_size=100", &admin).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"anomaly.complete")
            && actions.contains(&"order.force_complete")
            && actions.contains(&"order.refund"),
        "{audit}"
    );
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["admin"] == "ops-admin")
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_packages_entitlements_and_read_statistics() {
    let app = TestApp::spawn().await;
    let (u, admin) = (app.token("cleo"), app.admin_token());
    // A new package, then a price change that leaves existing orders alone.
    let (status, p) = app.post("/api/v1/admin/packages", &admin, Some(json!({
        "id": "coins_1000", "kind": "points", "name": "1000 coins", "amount": 8800, "currency": "CNY", "points": 1000, "bonus_points": 200, "sort_order": 12
    }))).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let (status, dup) = app.post("/api/v1/admin/packages", &admin, Some(json!({"id": "coins_1000", "kind": "points", "name": "x", "amount": 1, "currency": "CNY", "points": 1}))).await;
    assert_eq!(
        (status, dup["code"].as_str()),
        (StatusCode::CONFLICT, Some("package_exists"))
    );
    for bad in [
        json!({"id": "Bad Id", "kind": "points", "name": "x", "amount": 1, "currency": "CNY", "points": 1}),
        json!({"id": "m1", "kind": "membership", "name": "x", "amount": 1, "currency": "CNY", "membership_type": "gold", "validity_days": 1}),
        json!({"id": "p0", "kind": "points", "name": "x", "amount": 0, "currency": "CNY", "points": 1}),
        json!({"id": "p1", "kind": "points", "name": "x", "amount": 1, "currency": "CNY", "points": 1, "price": 3}),
    ] {
        let (status, body) = app
            .post("/api/v1/admin/packages", &admin, Some(bad.clone()))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")),
            "{bad}"
        );
    }
    let order = app.order(&u, "coins_1000", "mock").await;
    let put = |body: Value| {
        let (client, base, admin) = (app.client.clone(), app.base.clone(), admin.clone());
        async move {
            let r = client
                .put(format!("{base}/api/v1/admin/packages/coins_1000"))
                .bearer_auth(admin)
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, changed) = put(json!({"amount": 9900})).await;
    assert_eq!(
        (status, changed["amount"].as_i64()),
        (StatusCode::OK, Some(9900))
    );
    let (_, same) = app
        .get(&format!("/api/v1/orders/{}", order_no(&order)), &u)
        .await;
    assert_eq!(same["amount"], 8800, "the order keeps its price");
    let (status, _) = put(json!({"kind": "membership"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = put(json!({"is_active": false})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post(
            "/api/v1/orders",
            &u,
            Some(json!({"package_id": "coins_1000", "payment_method": "mock"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("package_inactive"))
    );

    // Points by hand, never below zero; membership extension.
    let (status, ent) = app
        .post(
            "/api/v1/admin/users/cleo/points/adjust",
            &admin,
            Some(json!({"points": 50, "bonus_points": 5, "reason": "lost coins re-issued"})),
        )
        .await;
    assert_eq!((status, ent["points"].as_u64()), (StatusCode::OK, Some(55)));
    let (status, body) = app
        .post(
            "/api/v1/admin/users/cleo/points/adjust",
            &admin,
            Some(json!({"points": -51, "reason": "too much"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_entitlement"))
    );
    let (status, body) = app
        .post(
            "/api/v1/admin/users/cleo/membership/extend",
            &admin,
            Some(json!({"days": 7, "reason": "apology"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("no_membership"))
    );
    let paid = order_no(&app.order(&u, "basic", "mock").await);
    app.pay(&u, &paid, "").await;
    let before = app.entitlements(&u).await["membership"]["expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, ent) = app
        .post(
            "/api/v1/admin/users/cleo/membership/extend",
            &admin,
            Some(json!({"days": 7, "reason": "apology"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(ent["membership"]["expires_at"].as_str().unwrap() > before.as_str());
    let (_, history) = app.get("/api/v1/me/entitlements/history", &u).await;
    let changes: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["change"].as_str().unwrap())
        .collect();
    assert_eq!(changes, ["admin_extend", "grant", "admin_adjust"]);

    // Statistics over a known set: 2 orders (1 paid basic, 1 pending coins_1000).
    let (status, stats) = app
        .get("/api/v1/admin/orders/statistics?days=7", &admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["by_status"]["paid"]["count"], 1);
    assert_eq!(stats["by_status"]["pending"]["count"], 1);
    assert_eq!(stats["paid_amount"]["CNY"], 990);
    assert_eq!(stats["by_method"]["mock"]["count"], 2);
    assert_eq!(stats["success_rate"], 1.0);
    assert_eq!(stats["series"].as_array().unwrap().len(), 1);
    let (status, _) = app
        .get("/api/v1/admin/orders/statistics?days=0", &admin)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_priced_by_the_unused_membership_and_replaces_it() {
    let app = TestApp::spawn().await;
    let u = app.token("dora");
    let (status, body) = app
        .post(
            "/api/v1/orders",
            &u,
            Some(json!({"package_id": "premium", "payment_method": "mock", "is_upgrade": true})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("no_membership_to_upgrade")
        )
    );
    let basic = paid_order(&app, &u, "basic").await;
    let _ = basic;
    for (package, code) in [
        ("basic", "not_an_upgrade"),
        ("coins_100", "validation_failed"),
    ] {
        let (status, body) = app
            .post(
                "/api/v1/orders",
                &u,
                Some(json!({"package_id": package, "payment_method": "mock", "is_upgrade": true})),
            )
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(code)),
            "{package}"
        );
    }
    let (status, order) = app
        .post(
            "/api/v1/orders",
            &u,
            Some(json!({"package_id": "premium", "payment_method": "mock", "is_upgrade": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    // Almost all of the 30-day basic membership (9.90) is unused: ~9.90 of credit.
    let credit = order["upgrade"]["credit"].as_i64().unwrap();
    assert!((985..=990).contains(&credit), "{order}");
    assert_eq!(order["upgrade"]["list_price"], 2990);
    assert_eq!(order["upgrade"]["from_type"], "pro");
    assert_eq!(order["amount"].as_i64().unwrap(), 2990 - credit);
    let no = order_no(&order);
    let (_, shown) = app.get(&format!("/api/v1/orders/{no}"), &u).await;
    assert_eq!(shown["upgrade"], order["upgrade"]);
    app.pay(&u, &no, "").await;
    let ent = app.entitlements(&u).await;
    assert_eq!(ent["membership"]["type"], "premium");
    assert_eq!(
        ent["membership"]["queries_remaining"], 500,
        "replaced, not added: {ent}"
    );
    app.stop().await;
}

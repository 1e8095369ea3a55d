//! Upgrades (issue 8, item 11): a database written by an older payd — data format 1,
//! Order schema 1, kept as `tests/fixtures/upgrade/v1.paydbak` (made by the real
//! payd of that version; `make-v1-fixture.sh` beside it says how) — is restored,
//! migrated to format 2 (orders gain `settled_at`) and served: every order readable
//! with its settlement time, the pending ones still expire, balances intact, new
//! purchases work. A database of a newer format is refused with a clear error.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use payd::backup;
use payd_actors::model::{OrderStatus, TimelineEntry, Timestamp};
use payd_actors::tables::{ORDERS, TIMELINE};
use payd_storage::{StorageError, Store, StoreOptions};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{TestApp, order_no};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upgrade/v1.paydbak")
}

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

async fn orders(app: &TestApp, token: &str) -> Vec<Value> {
    let (status, page) = app.get("/api/v1/orders?page_size=100", token).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().unwrap().clone()
}

fn count(list: &[Value], status: &str) -> usize {
    list.iter().filter(|o| o["status"] == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_database_is_migrated_and_served_pending_orders_still_expire() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let restored = backup::restore(
        &fixture(),
        dir.path(),
        &payd::app::store_tables(),
        false,
        now(),
    )
    .await
    .expect("the v1 backup restores");
    assert_eq!(
        restored.backup.data_format, 1,
        "the fixture is a format-1 backup"
    );

    // Migrated on disk: every order is schema 2 now.
    let app = TestApp::spawn_in(dir.clone(), "").await;
    {
        let view = app.app().state().store.read().unwrap();
        let raw = view.raw_entries(ORDERS.name()).unwrap();
        assert_eq!(raw.len(), 7, "the fixture holds 7 orders");
        assert!(
            raw.iter().all(|(_, v)| v[0] == 2),
            "an order was left at schema 1"
        );
    }
    let a = app.token("upgrade-a");
    let b = app.token("upgrade-b");

    // Readable, each settled order with the moment its timeline says it left pending.
    // (The pending one's expiry has passed: it may already have expired by now.)
    let list = orders(&app, &a).await;
    assert_eq!(list.len(), 5);
    assert_eq!(
        (
            count(&list, "paid"),
            count(&list, "cancelled"),
            count(&list, "expired") + count(&list, "pending")
        ),
        (2, 1, 2)
    );
    {
        let view = app.app().state().store.read().unwrap();
        for o in &list {
            let no = o["order_no"].as_str().unwrap().to_string();
            if o["status"] == "pending" {
                assert!(o["settled_at"].is_null(), "{o}");
                continue;
            }
            // The order and its timeline from one snapshot.
            let stored = view.get(&ORDERS, &no).unwrap().expect("stored");
            let timeline: Vec<((String, u64), TimelineEntry)> =
                view.scan_prefix(&TIMELINE, &no, usize::MAX, false).unwrap();
            let left_pending = timeline
                .iter()
                .find(|(_, e)| e.from == OrderStatus::Pending && e.to != OrderStatus::Pending)
                .map(|(_, e)| e.at);
            assert_eq!(stored.settled_at, left_pending, "{o}");
            assert_eq!(
                o["settled_at"].is_string(),
                stored.status != OrderStatus::Pending,
                "{o}"
            );
            if let Some(paid_at) = o["paid_at"].as_str() {
                assert!(o["settled_at"].as_str().unwrap() >= paid_at, "{o}");
            }
        }
    }

    // Balances intact.
    assert_eq!(app.entitlements(&a).await["points"], 220);
    assert_eq!(app.entitlements(&b).await["points"], 110);

    // The pending orders' expiry passed while the old payd was gone: they expire now
    // (query → close at the mock → expired), settled at that moment.
    for (token, list) in [(&a, list.clone()), (&b, orders(&app, &b).await)] {
        for o in list.iter().filter(|o| o["status"] == "pending") {
            let no = o["order_no"].as_str().unwrap();
            let expired = app
                .wait_for_status(token, no, "expired", Duration::from_secs(20))
                .await;
            assert!(expired["settled_at"].is_string(), "{expired}");
        }
    }
    let list = orders(&app, &a).await;
    assert_eq!((count(&list, "expired"), count(&list, "pending")), (2, 0));

    // And it serves new purchases, written in the new schema.
    let no = order_no(&app.order(&a, "coins_100", "mock").await);
    let (status, paid) = app.pay(&a, &no, "").await;
    assert_eq!(status, StatusCode::OK, "{paid}");
    assert!(
        paid["settled_at"].as_str().unwrap() >= paid["paid_at"].as_str().unwrap(),
        "{paid}"
    );
    assert_eq!(app.entitlements(&a).await["points"], 330);
    app.stop().await;

    // A build that knows only format 1 refuses the migrated database, clearly.
    let err = Store::open(StoreOptions::new(dir.path(), payd::app::store_tables()))
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            StorageError::NewerFormat {
                found: 2,
                supported: 1
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer payd"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_newer_format_is_refused_before_anything_is_touched() {
    // A backup as a future payd (data format 99) would write it.
    let src = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixture()).unwrap();
    let body = bytes.len() - 32;
    bytes.truncate(body);
    bytes.splice(8..12, 2u32.to_be_bytes());
    bytes.splice(12..12, 99u32.to_be_bytes());
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    let future = src.path().join("future.paydbak");
    std::fs::write(&future, &bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = backup::restore(
        &future,
        dir.path(),
        &payd::app::store_tables(),
        false,
        now(),
    )
    .await
    .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("newer payd") && text.contains("99"), "{text}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "something was written"
    );
}

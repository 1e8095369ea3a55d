//! Operations: a backup taken while buyers pay restores to a database payd opens,
//! with orders and balances that match; `payd backup` / `payd restore` on the
//! command line; retention of idempotency keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use payd_actors::model::{OrderStatus, Timestamp};
use payd_actors::tables::{ENTITLEMENTS, IDEMPOTENCY, ORDERS};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{BASE_CONFIG, TestApp, order_no};

fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

/// Buyers creating and paying 110-point orders until told to stop. Returns the
/// orders whose creation was acknowledged, in order, per buyer.
fn load(
    app: &TestApp,
    buyers: &[&str],
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<(String, String)>>> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    for buyer in buyers {
        let (client, base, token) = (app.client.clone(), app.base.clone(), app.token(buyer));
        let (acked, stop, buyer) = (acked.clone(), stop.clone(), buyer.to_string());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let r = client
                    .post(format!("{base}/api/v1/orders"))
                    .bearer_auth(&token)
                    .json(&json!({"package_id": "coins_100", "payment_method": "mock"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                let no = order_no(&r.json::<Value>().await.unwrap());
                acked.lock().unwrap().push((buyer.clone(), no.clone()));
                let r = client
                    .post(format!("{base}/api/v1/mock/orders/{no}/pay"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
        });
    }
    acked
}

async fn wait_len(acked: &Mutex<Vec<(String, String)>>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "load too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_buyers_pay_restores_to_matching_orders_and_balances() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = load(&app, &["ada", "ben", "cleo", "dan"], stop.clone());
    wait_len(&acked, 12).await;

    let backups = tempfile::tempdir().unwrap();
    let dest = backups.path().join("payd.backup");
    let before = acked.lock().unwrap().clone();
    let (status, summary) = app
        .post(
            "/api/v1/admin/backup",
            &admin,
            Some(json!({"dest": dest.display().to_string()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{summary}");
    assert!(summary["tables"]["orders"].as_u64().unwrap() >= before.len() as u64);
    // Buyers keep paying after the snapshot.
    let at_backup = acked.lock().unwrap().len();
    wait_len(&acked, at_backup + 8).await;
    stop.store(true, Ordering::SeqCst);

    // A backup is never overwritten, and a relative path is refused.
    let (status, body) = app
        .post(
            "/api/v1/admin/backup",
            &admin,
            Some(json!({"dest": dest.display().to_string()})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("backup_exists"))
    );
    let (status, _) = app
        .post(
            "/api/v1/admin/backup",
            &admin,
            Some(json!({"dest": "rel/path"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = app
        .post(
            "/api/v1/admin/backup",
            &app.token("ada"),
            Some(json!({"dest": "/tmp/x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let checked = payd::backup::verify(&dest).expect("the backup checks out");
    assert_eq!(checked.entries(), summary["entries"].as_u64().unwrap());

    // Restore into a fresh directory and start payd on it.
    let restored_dir = Arc::new(tempfile::tempdir().unwrap());
    let done = payd::backup::restore(
        &dest,
        restored_dir.path(),
        &payd::app::store_tables(),
        false,
        now(),
    )
    .await
    .expect("restored");
    assert_eq!(done.moved_aside, None);
    let restored = TestApp::spawn_in(restored_dir.clone(), "").await;

    // From one snapshot of the restored database: every order acknowledged before
    // the backup is there, and each buyer holds exactly 110 points per paid order.
    let view = restored.app().state().store.read().unwrap();
    let orders: Vec<_> = view
        .scan_prefix(&ORDERS, &(), usize::MAX, false)
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    for (_, no) in &before {
        assert!(orders.iter().any(|o| &o.order_no == no), "{no} missing");
    }
    let mut paid: HashMap<String, u64> = HashMap::new();
    for o in &orders {
        if o.status == OrderStatus::Paid {
            *paid.entry(o.user_id.clone()).or_default() += 1;
            // A paid order is the same record as in the live database.
            assert_eq!(o, &app.stored_order(&o.order_no));
        }
    }
    assert!(paid.values().sum::<u64>() >= 8, "{paid:?}");
    for (user, n) in &paid {
        let ent = view.get(&ENTITLEMENTS, user).unwrap().unwrap_or_default();
        assert_eq!(ent.points_paid + ent.points_bonus, 110 * n, "{user}");
    }
    drop(view);
    // The restored payd serves them.
    let (buyer, no) = &before[0];
    let (status, order) = restored
        .get(&format!("/api/v1/orders/{no}"), &restored.token(buyer))
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");

    // Restore refuses the directory of a running payd, even when forced, and a
    // non-empty one without --force.
    let err = payd::backup::restore(
        &dest,
        restored_dir.path(),
        &payd::app::store_tables(),
        true,
        now(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, payd::backup::BackupError::Live(_)), "{err}");
    restored.stop().await;
    let err = payd::backup::restore(
        &dest,
        restored_dir.path(),
        &payd::app::store_tables(),
        false,
        now(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, payd::backup::BackupError::NotEmpty(_)),
        "{err}"
    );
    // Forced, the old directory is moved aside, never deleted.
    let forced = payd::backup::restore(
        &dest,
        restored_dir.path(),
        &payd::app::store_tables(),
        true,
        now(),
    )
    .await
    .unwrap();
    let aside = forced.moved_aside.expect("moved aside");
    assert!(aside.join("lock").exists());
    std::fs::remove_dir_all(aside).unwrap();

    // A damaged file is refused before anything is touched.
    let mut bytes = std::fs::read(&dest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = backups.path().join("damaged.backup");
    std::fs::write(&damaged, bytes).unwrap();
    let err = payd::backup::verify(&damaged).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    app.stop().await;
}

fn cli_config(dir: &Path, name: &str, data: &Path) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[storage]\npath = {:?}\n{BASE_CONFIG}",
            data.display().to_string()
        ),
    )
    .unwrap();
    path
}

async fn payd(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_payd"))
            .args(&args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_backs_up_a_running_or_stopped_payd_and_restores_safely() {
    let app = TestApp::spawn().await;
    let u = app.token("eve");
    let no = order_no(&app.order(&u, "coins_100", "mock").await);
    app.pay(&u, &no, "").await;
    let work = tempfile::tempdir().unwrap();
    let live_config = cli_config(work.path(), "live.toml", app.dir.path());
    let config = live_config.display().to_string();

    // payd holds the database: the CLI asks it to write the backup.
    let online = work.path().join("online.backup");
    let (ok, out) = payd(vec![
        "backup".into(),
        online.display().to_string(),
        "--url".into(),
        app.base.clone(),
        "--config".into(),
        config.clone(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("running payd"), "{out}");
    // Restoring over the live directory is refused, forced or not.
    let (ok, out) = payd(vec![
        "restore".into(),
        online.display().to_string(),
        "--force".into(),
        "--config".into(),
        config.clone(),
    ])
    .await;
    assert!(!ok && out.contains("in use"), "{out}");

    // Stopped: the CLI opens the database itself.
    let dir = app.dir.clone();
    app.stop().await;
    let offline = work.path().join("offline.backup");
    let (ok, out) = payd(vec![
        "backup".into(),
        offline.display().to_string(),
        "--config".into(),
        config.clone(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("not running"), "{out}");
    // The same database, plus the online backup's own audit entry.
    let count = |path: &Path, table: &str| {
        payd::backup::verify(path)
            .unwrap()
            .tables
            .into_iter()
            .find(|(t, _)| t == table)
            .map(|(_, n)| n)
    };
    assert_eq!(count(&online, "orders"), Some(1));
    assert_eq!(count(&offline, "orders"), Some(1));
    assert_eq!(
        count(&offline, "audit"),
        count(&online, "audit").map(|n| n + 1)
    );

    // Into a fresh directory; then the restored payd has the paid order.
    let fresh = Arc::new(tempfile::tempdir().unwrap());
    let fresh_config = cli_config(work.path(), "fresh.toml", fresh.path())
        .display()
        .to_string();
    let (ok, out) = payd(vec![
        "restore".into(),
        online.display().to_string(),
        "--config".into(),
        fresh_config.clone(),
    ])
    .await;
    assert!(ok, "{out}");
    let (ok, out) = payd(vec![
        "restore".into(),
        offline.display().to_string(),
        "--config".into(),
        fresh_config,
    ])
    .await;
    assert!(!ok && out.contains("not empty"), "{out}");
    let restored = TestApp::spawn_in(fresh, "").await;
    assert_eq!(restored.stored_order(&no).status, OrderStatus::Paid);
    assert_eq!(
        restored.entitlements(&restored.token("eve")).await["points"],
        110
    );
    restored.stop().await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_pruned_after_their_retention() {
    // Driven with an injected "now": a key a day old is pruned, a fresh one is kept.
    let app = TestApp::spawn().await;
    let u = app.token("fay");
    let r = app
        .client
        .post(format!("{}/api/v1/orders", app.base))
        .bearer_auth(&u)
        .header("Idempotency-Key", "retention-1")
        .json(&json!({"package_id": "coins_100", "payment_method": "mock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let store = app.app().state().store.clone();
    let count = |store: &payd_storage::Store| {
        store
            .read()
            .unwrap()
            .scan_prefix(&IDEMPOTENCY, &(), usize::MAX, false)
            .unwrap()
            .len()
    };
    assert_eq!(count(&store), 1);
    let cfg = app.app().state().config.retention.clone();
    let pruned = payd::retention::prune_once(&store, &cfg, now())
        .await
        .unwrap();
    assert_eq!(pruned.idempotency_keys, 0);
    let tomorrow = now().plus_ms(25 * 3_600_000);
    let pruned = payd::retention::prune_once(&store, &cfg, tomorrow)
        .await
        .unwrap();
    assert_eq!(pruned.idempotency_keys, 1);
    assert_eq!(count(&store), 0);
    app.stop().await;

    // And on its schedule, with short settings.
    let app =
        TestApp::spawn_with("[retention]\ninterval = \"1s\"\nidempotency_keys = \"1s\"\n").await;
    let r = app
        .client
        .post(format!("{}/api/v1/orders", app.base))
        .bearer_auth(app.token("gus"))
        .header("Idempotency-Key", "retention-2")
        .json(&json!({"package_id": "coins_100", "payment_method": "mock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let store = app.app().state().store.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(&store) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never pruned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

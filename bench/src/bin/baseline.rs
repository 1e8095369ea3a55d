//! The baseline: the least an axum JSON endpoint does — parse the order request's
//! JSON body and answer 201 with a small JSON document — built with the same profile
//! and driven with the same requests as payd, so payd's figures read as a share of
//! what HTTP + JSON alone cost on this machine.
//!
//! `baseline --port N` listens on 127.0.0.1:N; `GET /readyz` answers 200.

use axum::Json;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};

async fn create(Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let answer = json!({
        "order_no": "PD000000000000BASELINE00000000",
        "status": "pending",
        "package_id": body["package_id"],
        "payment_method": body["payment_method"],
    });
    (StatusCode::CREATED, Json(answer))
}

async fn ready() -> Json<Value> {
    Json(json!({"status": "ready"}))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = match (args.next().as_deref(), args.next()) {
        (Some("--port"), Some(p)) => p.parse()?,
        _ => anyhow::bail!("usage: baseline --port N"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = axum::Router::new()
            .route("/api/v1/orders", post(create))
            .route("/readyz", get(ready));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

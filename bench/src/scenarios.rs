//! What the workers do: the same order request against the baseline and payd, reads
//! of orders created earlier, create + mock pay, and queued WeChat callbacks.

use std::sync::{Arc, Mutex};

use hyper::body::Bytes;
use hyper::{Method, StatusCode};

use crate::load::{Conn, Created, Users, Work, expect, order_no};

/// The package every order buys (points: no membership rules in the way).
pub(crate) const PACKAGE: &str = "coins_100";
pub(crate) const AMOUNT: i64 = 990;

fn order_body(method: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"package_id":"{PACKAGE}","payment_method":"{method}"}}"#
    ))
}

/// `POST /api/v1/orders`, expecting 201. Sent to the baseline too, byte for byte.
pub(crate) struct CreateOrder {
    pub(crate) users: Arc<Users>,
    body: Bytes,
    /// Keep (user, order number) of at most this many orders.
    keep: Option<(Created, usize)>,
}

impl CreateOrder {
    pub(crate) fn new(users: Arc<Users>, method: &str, keep: Option<(Created, usize)>) -> Self {
        CreateOrder {
            users,
            body: order_body(method),
            keep,
        }
    }
}

impl Work for CreateOrder {
    async fn step(&self, conn: &mut Conn, _worker: usize, seq: u64) -> anyhow::Result<bool> {
        let user = seq as usize;
        let auth = self.users.auth(user);
        let (status, body) = conn
            .send(
                Method::POST,
                "/api/v1/orders",
                &[("authorization", &auth)],
                Some(self.body.clone()),
            )
            .await?;
        expect(status, StatusCode::CREATED, &body)?;
        if let Some((created, max)) = &self.keep {
            // Parsed only while orders are still wanted: the load generator shares
            // the cores with payd, and the baseline's requests parse nothing.
            let wanted = created.lock().expect("created orders lock").len() < *max;
            if wanted {
                let no = order_no(&body)?;
                let mut c = created.lock().expect("created orders lock");
                if c.len() < *max {
                    c.push((user % self.users.tokens.len(), no));
                }
            }
        }
        Ok(true)
    }
}

/// `GET /api/v1/orders/{no}` of orders created earlier, by their owners.
pub(crate) struct ReadOrder {
    pub(crate) users: Arc<Users>,
    pub(crate) orders: Arc<Vec<(usize, String)>>,
}

impl Work for ReadOrder {
    async fn step(&self, conn: &mut Conn, _worker: usize, seq: u64) -> anyhow::Result<bool> {
        // A stride through the orders so reads spread over the whole key space.
        let i = (seq.wrapping_mul(7919) % self.orders.len() as u64) as usize;
        let (user, no) = &self.orders[i];
        let auth = self.users.auth(*user);
        let path = format!("/api/v1/orders/{no}");
        let (status, body) = conn
            .send(Method::GET, &path, &[("authorization", &auth)], None)
            .await?;
        expect(status, StatusCode::OK, &body)?;
        Ok(true)
    }
}

/// Create, then `POST /api/v1/mock/orders/{no}/pay` (the mock provider's callback
/// path): one operation is one whole purchase.
pub(crate) struct MockPurchase {
    pub(crate) users: Arc<Users>,
    body: Bytes,
}

impl MockPurchase {
    pub(crate) fn new(users: Arc<Users>) -> Self {
        MockPurchase {
            users,
            body: order_body("mock"),
        }
    }
}

impl Work for MockPurchase {
    async fn step(&self, conn: &mut Conn, _worker: usize, seq: u64) -> anyhow::Result<bool> {
        let auth = self.users.auth(seq as usize);
        let (status, body) = conn
            .send(
                Method::POST,
                "/api/v1/orders",
                &[("authorization", &auth)],
                Some(self.body.clone()),
            )
            .await?;
        expect(status, StatusCode::CREATED, &body)?;
        let no = order_no(&body)?;
        let path = format!("/api/v1/mock/orders/{no}/pay");
        let (status, body) = conn
            .send(Method::POST, &path, &[("authorization", &auth)], None)
            .await?;
        expect(status, StatusCode::OK, &body)?;
        Ok(true)
    }
}

/// A signed provider callback, ready to send.
pub(crate) struct Callback {
    pub(crate) body: Bytes,
    pub(crate) headers: Vec<(String, String)>,
}

/// Sends queued callbacks to `path`, expecting `want`, until the queue is empty.
pub(crate) struct Callbacks {
    pub(crate) path: &'static str,
    pub(crate) want: StatusCode,
    pub(crate) queue: Mutex<Vec<Callback>>,
}

impl Work for Callbacks {
    async fn step(&self, conn: &mut Conn, _worker: usize, _seq: u64) -> anyhow::Result<bool> {
        let Some(cb) = self.queue.lock().expect("callback queue lock").pop() else {
            return Ok(false);
        };
        let headers: Vec<(&str, &str)> = cb
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, body) = conn
            .send(Method::POST, self.path, &headers, Some(cb.body))
            .await?;
        expect(status, self.want, &body)?;
        Ok(true)
    }
}

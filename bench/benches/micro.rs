//! Criterion micro-benchmarks of the hot pure functions on a request's path:
//! `cargo bench -p payd-bench --bench micro` (add `-- NAME` to run one group).
//!
//! Inputs are the real ones: orders as payd stores them, and for each provider a
//! validly signed callback from the test vectors in `tests/fixtures/vectors/` (each
//! verified as of the moment it was signed, so the freshness windows pass). Every
//! benchmark first asserts that its input is accepted, so a figure is never the
//! cost of an early rejection.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use payd::auth::Jwt;
use payd::providers::alipay::{self, AlipaySetup};
use payd::providers::stripe::webhook;
use payd::providers::wechat::{self, WechatSetup, crypto, xml};
use payd_actors::clock::SystemClock;
use payd_actors::model::{
    Currency, Order, PackageKind, PackageSnapshot, PaymentSource, Timer, TimerKind, Timestamp,
};
use payd_actors::order::machine::{Event, LatePaymentPolicy, PaymentReport, Policy, step};
use payd_storage::{Key, decode_record, encode_record};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/vectors")
        .join(name)
}

fn vectors(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).expect("vector file");
    serde_json::from_str(&text).expect("vector JSON")
}

fn text(v: &Value) -> &str {
    v.as_str().expect("a string in the vector")
}

/// payd's configuration with WeChat Pay v3 and Alipay set up as the vectors were made.
fn config() -> payd::config::Config {
    let toml = format!(
        r#"
[auth]
jwt_secret = "micro-benchmark-secret-0123456789"
[wechat]
app_id = "wx0000000000000001"
mch_id = "1900000001"
api_v3_key = "0123456789abcdef0123456789ABCDEF"
private_key_path = {key:?}
cert_serial_no = "3775B6A45ACD588826D15E583A95F5DD12345678"
platform_public_key_path = {pubkey:?}
platform_public_key_id = "PUB_KEY_ID_0119000000012024010100000000000001"
[alipay]
app_id = "2021000000000001"
seller_id = "2088000000000001"
private_key_path = {key:?}
alipay_public_key_path = {pubkey:?}
"#,
        key = fixture("merchant_rsa2048_private_pkcs8.pem"),
        pubkey = fixture("provider_rsa2048_public.pem"),
    );
    payd::config::load_from_str(&toml, &|_| None, &[]).expect("valid config")
}

fn policy() -> Policy {
    Policy {
        query_interval_ms: 5_000,
        query_retry_max: 10,
        qr_code_expire_ms: 300_000,
        retry_base_ms: 15_000,
        late_payment: LatePaymentPolicy::Grant,
    }
}

/// A pending order with its trade open and both deadlines set, as stored.
fn pending_order() -> Order {
    let created = Timestamp(1_763_800_000_000);
    let mut order = Order::for_tests(
        PackageSnapshot {
            name: "Pro membership, 30 days".into(),
            kind: PackageKind::Membership,
            membership_type: Some("pro".into()),
            validity_days: Some(30),
            queries_count: Some(100),
            points: None,
            bonus_points: None,
        },
        990,
        created,
    );
    order.trade_opened = true;
    order.qr_code_url = Some(format!("http://127.0.0.1:8080/mock/pay/{}", order.order_no));
    order.timers.poll = Some(Timer {
        at: created.plus_ms(5_000),
        generation: 1,
    });
    order.timers.expire = Some(Timer {
        at: order.expire_at,
        generation: 2,
    });
    order.timer_generation = 2;
    order.version = 1;
    order
}

fn machine(c: &mut Criterion) {
    let order = pending_order();
    let policy = policy();
    let now = order.created_at.plus_ms(60_000);
    let paid = Event::Confirmed(PaymentReport {
        transaction_id: "4200000000202611220000000001".into(),
        amount_minor: order.amount_minor,
        currency: Currency::parse("CNY").expect("currency"),
        paid_at: now,
        source: PaymentSource::Callback,
    });
    let t = step(&order, paid.clone(), now, &policy).expect("a payment is accepted");
    assert!(t.next.granted, "the payment grants");
    let mut g = c.benchmark_group("machine");
    g.bench_function("step: pending + payment → paid, granted", |b| {
        b.iter(|| step(black_box(&order), black_box(paid.clone()), now, &policy))
    });
    let expire = Event::Timer {
        kind: TimerKind::Expire,
        generation: 2,
    };
    step(&order, expire.clone(), order.expire_at, &policy).expect("the expiry is accepted");
    g.bench_function("step: pending + expiry → closing", |b| {
        b.iter(|| {
            step(
                black_box(&order),
                black_box(expire.clone()),
                order.expire_at,
                &policy,
            )
        })
    });
    g.finish();
}

fn codec(c: &mut Criterion) {
    let order = pending_order();
    let bytes = encode_record(&order);
    let back: Order = decode_record("orders", &bytes).expect("decodes");
    assert_eq!(back, order);
    let mut g = c.benchmark_group("codec");
    g.bench_function(format!("encode order ({} bytes)", bytes.len()), |b| {
        b.iter(|| encode_record(black_box(&order)))
    });
    g.bench_function("decode order", |b| {
        b.iter(|| decode_record::<Order>("orders", black_box(&bytes)))
    });
    let key = (
        "user-0001".to_string(),
        order.created_at.ms(),
        order.order_no.clone(),
    );
    g.bench_function("key (user, created_at, order_no) to bytes", |b| {
        b.iter(|| black_box(&key).to_bytes())
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    let cfg = config();
    let jwt = Jwt::new(&cfg.auth);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let token = jwt.mint("user-0001", false, now, 3_600);
    assert!(jwt.verify(&token).is_ok());
    let mut g = c.benchmark_group("jwt");
    // A token not seen before: the full HS256 check (a fresh token each time; minting
    // it is outside the measurement).
    let mut exp = 0u64;
    g.bench_function("verify a new HS256 token", |b| {
        b.iter_batched(
            || {
                exp += 1;
                jwt.mint("user-0001", false, now, 3_600 + exp)
            },
            |t| jwt.verify(&t),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("verify a remembered token", |b| {
        b.iter(|| jwt.verify(black_box(&token)))
    });
    g.finish();
}

fn wechat_v3(c: &mut Criterion) {
    let v = vectors("wechatpay_v3.json");
    let n = &v["payment_notification"];
    let headers: BTreeMap<String, String> = n["headers"]
        .as_object()
        .expect("headers")
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), text(v).to_string()))
        .collect();
    let body = text(&n["body"]).as_bytes().to_vec();
    let signed_at = Timestamp(
        text(&n["headers"]["Wechatpay-Timestamp"])
            .parse::<i64>()
            .expect("timestamp")
            * 1000,
    );
    let WechatSetup::V3(wechat) = wechat::setup(&config(), Arc::new(SystemClock)) else {
        panic!("WeChat Pay v3 is configured");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let header = |name: &str| headers.get(name).cloned();
    runtime
        .block_on(wechat.verify_logged_callback(header, &body, signed_at))
        .expect("the vector's callback verifies");
    // Every API v3 request payd makes (each new order's prepay among them) carries
    // the merchant's RSA-2048 signature: the floor under a WeChat purchase's cost.
    let pem =
        std::fs::read(fixture("merchant_rsa2048_private_pkcs8.pem")).expect("merchant key fixture");
    let signer = crypto::MerchantSigner::from_pem(&pem).expect("merchant key");
    let request = &v["request_signatures"][0];
    let message = text(&request["message"]).as_bytes().to_vec();
    assert_eq!(
        signer.sign_base64(&message),
        text(&request["signature"]),
        "the vector's request signature"
    );
    let mut g = c.benchmark_group("wechat_v3");
    g.bench_function("payment callback: RSA verify + AES-256-GCM + parse", |b| {
        b.iter(|| {
            runtime.block_on(wechat.verify_logged_callback(header, black_box(&body), signed_at))
        })
    });
    g.bench_function("request signature: RSA-2048 SHA-256 sign", |b| {
        b.iter(|| signer.sign_base64(black_box(&message)))
    });
    g.finish();
}

fn wechat_v2(c: &mut Criterion) {
    let v = vectors("wechatpay_v2.json");
    let n = &v["payment_notify"];
    let body = text(&n["xml"]).as_bytes().to_vec();
    let key = text(&n["api_key"]).to_string();
    let params = xml::parse_xml(&body).expect("the vector parses");
    assert!(
        crypto::v2_verify(&params, &key, None),
        "the vector verifies"
    );
    let mut g = c.benchmark_group("wechat_v2");
    g.bench_function("payment notify: parse XML + verify sign", |b| {
        b.iter(|| {
            let params = xml::parse_xml(black_box(&body)).expect("parses");
            crypto::v2_verify(&params, &key, None)
        })
    });
    g.finish();
}

fn alipay_notify(c: &mut Criterion) {
    let v = vectors("alipay.json");
    let body = text(&v["async_notify"]["raw_body"]).as_bytes().to_vec();
    let AlipaySetup::Ready(alipay) = alipay::setup(&config(), Arc::new(SystemClock)) else {
        panic!("Alipay is configured");
    };
    alipay
        .verify_notify(&body)
        .expect("the vector's notify verifies");
    let mut g = c.benchmark_group("alipay");
    g.bench_function("async notify: form decode + RSA2 verify", |b| {
        b.iter(|| alipay.verify_notify(black_box(&body)))
    });
    g.finish();
}

fn stripe(c: &mut Criterion) {
    let v = vectors("stripe.json");
    let payload = text(&v["payload"]).as_bytes().to_vec();
    let header = text(&v["stripe_signature"]).to_string();
    let secret = text(&v["secret"]).to_string();
    let at = v["timestamp"]
        .as_i64()
        .or_else(|| v["timestamp"].as_str()?.parse().ok())
        .expect("timestamp");
    webhook::verify(Some(&header), &payload, &[&secret], at).expect("the vector verifies");
    webhook::parse_event(&payload).expect("the vector's event parses");
    let mut g = c.benchmark_group("stripe");
    g.bench_function("webhook: HMAC-SHA256 verify + parse event", |b| {
        b.iter(|| {
            webhook::verify(Some(&header), black_box(&payload), &[&secret], at)
                .map(|_| webhook::parse_event(&payload))
        })
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = machine, codec, jwt, wechat_v3, wechat_v2, alipay_notify, stripe
}
criterion_main!(micro);

//! Every callback parser and verifier fed arbitrary input (proptest, 10 000 cases
//! each, on stable Rust): none panics, each answers in bounded time, and nothing is
//! ever "verified" without a valid signature. The inputs mix pure noise with
//! near-misses (real header names, a real key id, a fresh timestamp) so that the
//! verifiers' deeper paths are reached too.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use crate::providers::alipay::{self, AlipaySetup};
use crate::providers::stripe::webhook;
use crate::providers::wechat::{self, WechatSetup, crypto, xml};

const CASES: u32 = 10_000;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn config() -> crate::config::Config {
    let text = format!(
        r#"
[auth]
jwt_secret = "arbitrary-input-secret-0123"
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
private_key_path = {key:?}
alipay_public_key_path = {pubkey:?}
"#,
        key = fixture("vectors/merchant_rsa2048_private_pkcs8.pem"),
        pubkey = fixture("vectors/provider_rsa2048_public.pem"),
    );
    crate::config::load_from_str(&text, &|_| None, &[]).expect("valid config")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Strings that look a little like what each field expects.
fn near_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,64}",
        "[A-Za-z0-9+/=]{0,400}",
        Just(String::new()),
        Just("PUB_KEY_ID_0119000000012024010100000000000001".to_string()),
        Just(now_secs().to_string()),
        Just("{\"id\":\"EV-1\",\"resource\":{}}".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_xml_parser_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2048), text in "(<[a-z]{0,4}>|</[a-z]{0,4}>|<!\\[CDATA\\[|\\]\\]>|[a-z&;<>!]){0,64}") {
        let _ = xml::parse_xml(&input);
        let _ = xml::parse_xml(text.as_bytes());
        let _ = xml::parse_xml(format!("<xml>{text}</xml>").as_bytes());
    }

    #[test]
    fn wechat_v2_signatures_never_verify_by_chance(fields in proptest::collection::btree_map("[a-z_]{1,12}", ".{0,24}", 0..12), sign in "[0-9A-F]{0,64}") {
        let mut params: BTreeMap<String, String> = fields;
        params.insert("sign".into(), sign);
        prop_assert!(!crypto::v2_verify(&params, "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6", None));
        let _ = crypto::v2_decrypt_req_info(params.get("sign").map(String::as_str).unwrap_or(""), "key");
    }

    #[test]
    fn wechat_authorization_and_aes_inputs_never_panic(header in ".{0,300}", nonce in ".{0,16}", aad in ".{0,16}", ct in "[A-Za-z0-9+/=]{0,200}") {
        let _ = crypto::parse_authorization(&header);
        prop_assert!(crypto::aes_gcm_decrypt(b"0123456789abcdef0123456789ABCDEF", &nonce, &aad, &ct).is_err());
    }

    #[test]
    fn stripe_signatures_never_verify_by_chance(header in prop_oneof![".{0,200}", "t=[0-9]{1,12}(,v1=[0-9a-f]{0,64}){0,3}(,v0=[0-9a-f]{0,8})?"], body in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(webhook::verify(Some(&header), &body, &["whsec_test_secret"], now_secs()).is_err());
        let _ = webhook::parse_event(&body);
    }

    #[test]
    fn alipay_form_and_json_scanners_never_panic(body in proptest::collection::vec(any::<u8>(), 0..1024), text in "[{}\\[\\]\":,a-z0-9_\\\\ ]{0,200}") {
        let _ = alipay::wire::form_decode(&body);
        let _ = alipay::wire::top_level_members(&text);
        let _ = alipay::wire::top_level_value(&text, "alipay_trade_query_response");
    }
}

#[test]
fn wechat_v3_callbacks_never_verify_without_a_valid_signature() {
    let cfg = config();
    let WechatSetup::V3(wechat) = wechat::setup(&cfg, Arc::new(payd_actors::clock::SystemClock))
    else {
        panic!("wechat configured");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        near_text(),
        near_text(),
        near_text(),
        near_text(),
        proptest::collection::vec(any::<u8>(), 0..512),
    );
    runner
        .run(&strategy, |(timestamp, nonce, signature, serial, body)| {
            let header = |name: &str| match name {
                "wechatpay-timestamp" => Some(timestamp.clone()),
                "wechatpay-nonce" => Some(nonce.clone()),
                "wechatpay-signature" => Some(signature.clone()),
                "wechatpay-serial" => Some(serial.clone()),
                _ => None,
            };
            let verdict = runtime.block_on(wechat.verify_callback(header, &body));
            prop_assert!(verdict.is_err());
            Ok(())
        })
        .expect("no arbitrary callback verified");
}

#[test]
fn alipay_notifies_and_returns_never_verify_without_a_valid_signature() {
    let cfg = config();
    let AlipaySetup::Ready(alipay) = alipay::setup(&cfg, Arc::new(payd_actors::clock::SystemClock))
    else {
        panic!("alipay configured");
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        "(app_id=2021000000000001|&|sign=[A-Za-z0-9%+/=]{0,60}|sign_type=RSA2|trade_status=TRADE_SUCCESS|out_trade_no=PD[0-9A-Z]{0,28}|total_amount=[0-9.]{0,8}|notify_id=[a-z0-9]{0,8}){0,12}"
            .prop_map(String::into_bytes),
    ];
    runner
        .run(&strategy, |body| {
            prop_assert!(alipay.verify_notify(&body).is_err());
            prop_assert!(
                alipay
                    .verify_return(&String::from_utf8_lossy(&body))
                    .is_err()
            );
            Ok(())
        })
        .expect("no arbitrary notify verified");
}

// ---------------------------------------------------------------------------
// The cargo-fuzz targets (src/fuzzing.rs) on stable: the committed corpus, then
// 10 000 arbitrary inputs each.
// ---------------------------------------------------------------------------

fn fuzz_runner() -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// A JSON-ish value: what a confused or hostile client sends.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(990),
            Just(i64::MAX),
            Just(i64::MIN)
        ]
        .prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("coins_100"),
            Just("vip_month"),
            Just("mock"),
            Just("wechat_native"),
            Just("CNY"),
            Just("USD"),
            Just("points"),
            Just("membership"),
            Just("127.0.0.1"),
            Just("resolve"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,12}",
        proptest::sample::select(vec![
            "package_id",
            "payment_method",
            "client_ip",
            "is_upgrade",
            "amount",
            "amount_minor",
            "reason",
            "points",
            "delta",
            "days",
            "action",
            "currency",
            "kind",
            "name",
            "description",
            "bonus_points",
            "validity_days",
            "membership_type",
            "is_active",
            "sort_order",
            "id",
            "queries",
            "queries_count",
            "refund_no",
            "mchid",
            "appid",
            "out_trade_no",
            "transaction_id",
            "trade_state",
            "total",
            "payer_total",
            "success_time",
            "out_refund_no",
            "refund_status",
            "payment_intent",
            "client_reference_id",
            "metadata",
            "order_no",
            "payment_status",
            "amount_total",
        ])
        .prop_map(str::to_string),
    ]
}

fn fuzz_inputs(target: &str, strategy: impl Strategy<Value = Vec<u8>>) {
    let harness = crate::fuzzing::Harness::new();
    fuzz_runner()
        .run(&strategy, |data| {
            harness.run(target, &data);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{target}: {e}"));
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..1024)
}

#[test]
fn the_committed_fuzz_corpus_replays_without_a_finding() {
    let harness = crate::fuzzing::Harness::new();
    let mut replayed = 0;
    for target in crate::fuzzing::TARGETS {
        let dir = format!("{}/fuzz/corpus/{target}", env!("CARGO_MANIFEST_DIR"));
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                harness.run(target, &data)
            }));
            assert!(outcome.is_ok(), "{} breaks {target}", path.display());
            n += 1;
        }
        assert!(n > 0, "no corpus for {target}");
        replayed += n;
    }
    assert!(replayed >= crate::fuzzing::TARGETS.len());
}

#[test]
fn wechat_v3_signed_resources_of_any_shape_never_panic() {
    let transaction = (any::<bool>(), json_value()).prop_map(|(refund, v)| {
        let mut s = String::from(if refund {
            "REFUND.SUCCESS\n"
        } else {
            "TRANSACTION.SUCCESS\n"
        });
        s.push_str(&v.to_string());
        s.into_bytes()
    });
    fuzz_inputs("wechat_v3_signed", prop_oneof![bytes(), transaction]);
}

#[test]
fn wechat_v2_notifications_never_verify_without_the_key() {
    let xmlish = proptest::collection::btree_map(
        "(return_code|result_code|appid|mch_id|out_trade_no|total_fee|sign|req_info|transaction_id|[a-z_]{1,8})",
        "[A-Za-z0-9+/=]{0,40}",
        0..10,
    )
    .prop_map(|m| crate::providers::wechat::xml::to_xml(&m).into_bytes());
    fuzz_inputs("wechat_v2_raw", prop_oneof![bytes(), xmlish]);
}

#[test]
fn wechat_v2_signed_notifications_of_any_shape_never_panic() {
    let fields = proptest::collection::btree_map(
        "(return_code|result_code|out_trade_no|total_fee|cash_fee|fee_type|transaction_id|time_end|trade_type|[a-z_]{1,8})",
        "(SUCCESS|FAIL|CNY|[0-9]{0,12}|-?[0-9]{1,3}|.{0,16})",
        0..10,
    )
    .prop_map(|m| crate::providers::wechat::xml::to_xml(&m).into_bytes());
    let refund = "R(<root>(<[a-z_]{1,12}>[A-Za-z0-9]{0,12}</[a-z_]{1,12}>){0,6}</root>|.{0,64})"
        .prop_map(String::into_bytes);
    fuzz_inputs("wechat_v2_signed", prop_oneof![bytes(), fields, refund]);
}

#[test]
fn alipay_signed_notifies_of_any_shape_never_panic() {
    let form = proptest::collection::btree_map(
        "(notify_id|out_trade_no|trade_status|total_amount|trade_no|gmt_payment|refund_fee|seller_id|[a-z_]{1,8})",
        "(TRADE_SUCCESS|TRADE_FINISHED|TRADE_CLOSED|WAIT_BUYER_PAY|[0-9]{0,8}(\\.[0-9]{0,3})?|-[0-9.]{1,6}|.{0,16})",
        0..10,
    )
    .prop_map(|m| {
        let pairs: Vec<(String, String)> = m.into_iter().collect();
        alipay::wire::form_encode(&pairs).into_bytes()
    });
    fuzz_inputs("alipay_signed", prop_oneof![bytes(), form]);
}

#[test]
fn stripe_signed_events_of_any_shape_never_panic() {
    let event = (
        "(checkout\\.session\\.completed|checkout\\.session\\.async_payment_succeeded|checkout\\.session\\.async_payment_failed|payment_intent\\.succeeded|charge\\.dispute\\.created|[a-z._]{0,24})",
        json_value(),
    )
        .prop_map(|(kind, object)| {
            serde_json::json!({"id": "evt_1", "object": "event", "type": kind, "created": 1, "data": {"object": object}})
                .to_string()
                .into_bytes()
        });
    fuzz_inputs("stripe_signed", prop_oneof![bytes(), event]);
}

#[test]
fn request_bodies_of_any_shape_get_a_problem_and_never_a_server_error() {
    let body = (any::<u8>(), json_value()).prop_map(|(endpoint, v)| {
        let mut out = vec![endpoint];
        out.extend_from_slice(v.to_string().as_bytes());
        out
    });
    fuzz_inputs("request_body", prop_oneof![bytes(), body]);
}

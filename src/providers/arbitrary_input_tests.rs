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

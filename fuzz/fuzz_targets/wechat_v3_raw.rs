#![no_main]
//! `cargo fuzz run wechat_v3_raw`: see payd's src/fuzzing.rs for what it checks.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use payd::fuzzing::Harness;

static HARNESS: OnceLock<Harness> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    HARNESS.get_or_init(Harness::new).run("wechat_v3_raw", data);
});

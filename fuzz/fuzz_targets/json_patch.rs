//! JSON patch (RFC 6902) as the server applies `application/json-patch+json` PATCH bodies
//! (crwatch-apiserver's `patch::json_patch`, with its limits).
//!
//! Input: line 1 the target object as JSON (a ConfigMap when it is not JSON), the rest the
//! patch body. Invariants: no panic, no unbounded growth (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb catch a patch that multiplies the object), and an empty patch is the
//! identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (target, body) = common::target_and_body(data);
    if let Ok(out) = crwatch_apiserver::patch::json_patch(&target, body) {
        let same = crwatch_apiserver::patch::json_patch(&out, b"[]").expect("an empty patch applies");
        assert_eq!(same, out);
    }
});

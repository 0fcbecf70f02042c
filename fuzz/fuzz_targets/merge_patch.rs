//! JSON merge patch (RFC 7386), strategic merge patch (built-in kinds' merge keys and the
//! `$patch`, `$retainKeys`, `$deleteFromPrimitiveList`, `$setElementOrder` directives kubectl
//! sends) and the merge step of server-side apply (crwatch-apiserver's `patch` module).
//!
//! Input: line 1 the target object as JSON (a ConfigMap when it is not JSON), the rest the
//! patch body. Invariants: no panic; a merge patch is idempotent (RFC 7386: applying it twice
//! gives what applying it once gives); applying an object onto itself changes nothing.
#![no_main]

use crwatch_apiserver::patch::{apply_merge, merge_patch, strategic_merge_patch};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (target, body) = common::target_and_body(data);
    if let Ok(once) = merge_patch(&target, body) {
        let twice = merge_patch(&once, body).expect("a patch that applied once applies twice");
        assert_eq!(twice, once, "merge patch is not idempotent");
    }
    for custom in [false, true] {
        let _ = strategic_merge_patch(&target, body, custom);
    }
    if let Ok(applied) = serde_json::from_slice::<serde_json::Value>(body) {
        let mut merged = target.clone();
        apply_merge(&mut merged, &applied);
        let mut again = merged.clone();
        apply_merge(&mut again, &applied);
        assert_eq!(again, merged, "apply merge is not idempotent");
        let mut onto_itself = target.clone();
        apply_merge(&mut onto_itself, &target);
        assert_eq!(onto_itself, target);
    }
});

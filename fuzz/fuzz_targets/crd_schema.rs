//! CRD structural schemas (crwatch-apiserver's `schema` module): the structural check a CRD's
//! `openAPIV3Schema` must pass, then pruning, defaulting and validation of an object against
//! it, in the order the server runs them on every custom resource write.
//!
//! Input: line 1 the schema as JSON, the rest the object as JSON. Invariants: no panic;
//! for a structural schema, pruning twice removes nothing more, and defaulting twice adds
//! nothing more (the server prunes and defaults again when it reads an object back).
#![no_main]

use crwatch_apiserver::schema::{apply_defaults, check_structural, prune, validate};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(i) = data.iter().position(|b| *b == b'\n') else {
        return;
    };
    let Ok(schema) = serde_json::from_slice::<Value>(&data[..i]) else {
        return;
    };
    let Ok(obj) = serde_json::from_slice::<Value>(&data[i + 1..]) else {
        return;
    };
    let structural = check_structural(&schema, "spec.versions[0].schema.openAPIV3Schema");
    for e in &structural {
        let _ = e.to_string();
    }
    if !structural.is_empty() {
        // The server refuses the CRD: its schema never meets an object.
        return;
    }
    let mut x = obj;
    let _ = prune(&schema, &mut x);
    let pruned_again = prune(&schema, &mut x.clone());
    assert!(pruned_again.is_empty(), "pruning again removed {pruned_again:?}");
    apply_defaults(&schema, &mut x);
    let mut again = x.clone();
    apply_defaults(&schema, &mut again);
    assert_eq!(again, x, "defaulting again changed the object");
    for e in validate(&schema, &x) {
        let _ = e.to_string();
        let _ = e.reason();
    }
});

//! Inputs the cargo-fuzz targets in `fuzz/` found crashing, replayed as plain tests so that
//! `cargo test` keeps them fixed without cargo-fuzz (the inputs are also in the targets' seed
//! corpora, under `fuzz/corpus/<target>/crash-*`).

use crwatch_apiserver::fuzzing::{Server, manifest_documents};
use crwatch_apiserver::patch::json_patch;
use serde_json::json;

/// A `move` whose destination's parent is missing fails after it removed its source; json-patch's
/// `patch` then undid the operations before it, could not (their paths were gone with the
/// source) and panicked (`unreachable!`), killing the request instead of answering 422.
#[test]
fn json_patch_failing_move_after_other_operations_is_422_not_a_panic() {
    let target = json!({"metadata": {"name": "a"}, "data": {"a": "1"}});
    let body =
        br#"[{"op":"add","path":"/metadata/x","value":"1"},{"op":"move","from":"/metadata","path":"/nope/y"}]"#;
    let err = json_patch(&target, body).expect_err("the move cannot be applied");
    assert_eq!(err.code, 422);
    // What the fuzzer found: a test and a copy before the failing move.
    let body = br#"[{"op":"test","path":"/data/a","value":"1"},{"op":"copy","from":"/data","path":"/metadata/annotations"},{"op":"move","from":"/metadata","path":"/me-adata/annotations"}]"#;
    assert_eq!(json_patch(&target, body).expect_err("cannot apply").code, 422);
}

/// Built-in kinds whose defaulting indexed into a field of the wrong JSON type (a Deployment
/// with `spec: x`, a Secret with `data: x` beside `stringData`) panicked; the real server refuses
/// them with encoding/json's error as 400 BadRequest.
#[tokio::test]
async fn builtin_fields_of_the_wrong_type_are_400_not_a_panic() {
    let server = Server::new().await.expect("server");
    // What the fuzzer found (manifest target), a Deployment whose spec is a string.
    let docs = manifest_documents(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  rmetadata:e sl2x\"}\n",
    )
    .expect("YAML");
    let err = server
        .apply(docs[0].clone())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains(
            "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field Deployment.spec of type v1.DeploymentSpec"
        ),
        "{err}"
    );
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": "x", "stringData": {"a": "b"}});
    let err = server.apply(secret).await.expect_err("refused").to_string();
    assert!(
        err.contains(
            "json: cannot unmarshal string into Go struct field Secret.data of type map[string][]uint8"
        ),
        "{err}"
    );
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "spec": [1]});
    let err = server.apply(ns).await.expect_err("refused").to_string();
    assert!(
        err.contains("cannot unmarshal array into Go struct field Namespace.spec"),
        "{err}"
    );
    // Objects and nulls are still defaulted.
    let ok = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let out = server.apply(ok).await.expect("a valid Deployment");
    assert_eq!(out["spec"]["replicas"], 1);
}

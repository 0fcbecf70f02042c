//! Bad input is refused with the real server's words, on the in-process server and (with
//! `CRWATCH_TEST_KUBECONFIG`) on a real cluster: malformed JSON bodies, bodies of another kind
//! or version, custom resources without a kind, server-side apply configurations of another
//! type, and unparseable label selectors.

mod common;

use http_body_util::BodyExt;
use serde_json::{Value, json};

/// Code and body of a raw request.
async fn raw(client: &kube::Client, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    raw_typed(client, method, path, "application/json", body).await
}

async fn raw_typed(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(kube::client::Body::from(body.to_vec()))
        .expect("request");
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (code, body)
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_mismatched_bodies_get_the_real_400s() {
    for t in common::targets().await {
        let ns = t.namespace("wording").await;
        let cms = format!("/api/v1/namespaces/{ns}/configmaps");
        let cases: Vec<(&[u8], String)> = vec![
            (
                br#"{"metadata": {"name": "#,
                r#"the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: unexpected end of JSON input ({"metadata": {"name": )"#.into(),
            ),
            (
                br#"{"metadata": {"name": "a"}} x"#,
                r#"the object provided is unrecognized (must be of type ConfigMap): couldn't get version/kind; json parse error: invalid character 'x' after top-level value ({"metadata": {"name": "a"}} x)"#.into(),
            ),
            (
                br#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}}"#,
                r#"Secret in version "v1" cannot be handled as a ConfigMap: converting (v1.Secret) to (core.ConfigMap): unknown conversion"#.into(),
            ),
        ];
        for (body, want) in cases {
            let (code, got) = raw(&t.client, "POST", &cms, body).await;
            assert_eq!(
                (code, &got),
                (400, &status(400, "BadRequest", &want)),
                "[{}] {}",
                t.name,
                String::from_utf8_lossy(body)
            );
        }
        // A built-in kind takes its apiVersion and kind from the URL when the body has none.
        let (code, got) = raw(&t.client, "POST", &cms, br#"{"metadata": {"name": "bare"}}"#).await;
        assert_eq!(code, 201, "[{}] {got}", t.name);
        assert_eq!(
            (got["apiVersion"].as_str(), got["kind"].as_str()),
            (Some("v1"), Some("ConfigMap"))
        );

        // A custom resource needs its kind.
        t.install_database_crd().await;
        let dbs = format!("/apis/stable.example.com/v1/namespaces/{ns}/databases");
        let body = br#"{"metadata": {"name": "d"}, "spec": {"engine": "PostgreSQL"}}"#;
        let (code, got) = raw(&t.client, "POST", &dbs, body).await;
        let want = format!(
            "Database in version \"v1\" cannot be handled as a Database: Object 'Kind' is missing in '{}'",
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            (code, &got),
            (400, &status(400, "BadRequest", &want)),
            "[{}]",
            t.name
        );
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_configurations_of_another_type_get_the_field_managers_400() {
    for t in common::targets().await {
        let ns = t.namespace("apply-wording").await;
        let path = format!("/api/v1/namespaces/{ns}/configmaps/a?fieldManager=test");
        for (body, want) in [
            (
                r#"{"apiVersion": "v1", "metadata": {"name": "a"}}"#,
                "invalid object type: /v1, Kind=",
            ),
            (
                r#"{"kind": "ConfigMap", "metadata": {"name": "a"}}"#,
                "invalid object type: /, Kind=ConfigMap",
            ),
            (
                r#"{"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "a"}}"#,
                "invalid object type: apps/v1, Kind=ConfigMap",
            ),
        ] {
            let (code, got) = raw_typed(
                &t.client,
                "PATCH",
                &path,
                "application/apply-patch+yaml",
                body.as_bytes(),
            )
            .await;
            assert_eq!(
                (code, &got),
                (400, &status(400, "BadRequest", want)),
                "[{}] {body}",
                t.name
            );
        }
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_label_selectors_get_the_real_400s() {
    for t in common::targets().await {
        let ns = t.namespace("selector-wording").await;
        for (selector, want) in [
            ("=x", "found '=', expected: !, identifier, or 'end of string'"),
            ("app=web,", "found '', expected: identifier after ','"),
            (
                "app in web",
                "unable to parse requirement: found 'web' expected: '('",
            ),
            (
                "a b",
                "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt",
            ),
        ] {
            let path = format!(
                "/api/v1/namespaces/{ns}/configmaps?labelSelector={}",
                url_escape(selector)
            );
            let (code, got) = raw(&t.client, "GET", &path, b"").await;
            assert_eq!(
                (code, &got),
                (400, &status(400, "BadRequest", want)),
                "[{}] {selector}",
                t.name
            );
        }
        t.cleanup().await;
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

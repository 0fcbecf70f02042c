//! Typed Kubernetes requests that never put a response body in a log or an error.
//!
//! kube's `Api<K>` methods decode answers with `Client::request`, which on a decode failure
//! logs the whole response body at WARN (`tracing::warn!("{}, {:?}", text, e)` in kube-client),
//! and the `SerdeError` it returns quotes the offending value (`invalid type: string
//! "hunter2"`). An answer that does not decode is exactly the unusual case: a Secret with an
//! unexpected field, a CRD whose objects changed shape. Its body then reached the logs of
//! `database-operator` and `crwatch forward`, passwords included.
//!
//! These functions send the same requests as `Api<K>`'s methods of the same names, through
//! [`kube::Client::request_text`] (which logs no body), and decode the answer here: a failure
//! becomes a [`kube::Error::SerdeError`] naming the request, the path in the object and the
//! kind of value that was wrong, never the value (see
//! [`redact_decode_message`](crate::source::redact_decode_message)). Every Kubernetes request
//! of crwatch's runtime, the forwarder, the operators and the CLI's demo goes through here or
//! through the list/watch engine, which decodes the same way.
//!
//! ```no_run
//! # async fn f(client: kube::Client) -> kube::Result<()> {
//! use k8s_openapi::api::core::v1::Secret;
//! let secrets: kube::Api<Secret> = kube::Api::namespaced(client, "default");
//! if let Some(s) = crwatch::api::get_opt(&secrets, "db-credentials").await? {
//!     println!("{} keys", s.data.map(|d| d.len()).unwrap_or(0));
//! }
//! # Ok(()) }
//! ```

use kube::Resource;
use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, ObjectList, Patch, PatchParams, PostParams};
use kube::core::Request;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Decode an answer; a failure names `what` and where in the object, never its values.
pub fn decode<T: DeserializeOwned>(text: &str, what: &str) -> kube::Result<T> {
    use serde::de::Error as _;
    crate::json::from_str(text).map_err(|first| {
        let mut de = serde_json::Deserializer::from_str(text);
        de.disable_recursion_limit();
        // At any depth, as the first pass (the stack grows on the heap).
        let stacked = serde_stacker::Deserializer {
            de: &mut de,
            red_zone: 64 << 10,
            stack_size: 2 << 20,
        };
        let again = serde_path_to_error::deserialize::<_, T>(stacked);
        let (path, message) = match again {
            Err(e) => (e.path().to_string(), e.into_inner().to_string()),
            Ok(_) => (".".to_string(), first.to_string()),
        };
        let message = crate::source::redact_decode_message(&message);
        kube::Error::SerdeError(serde_json::Error::custom(match path.as_str() {
            "." => format!("{what}: the answer does not decode: {message}"),
            _ => format!("{what}: the answer does not decode: {path}: {message}"),
        }))
    })
}

fn parts<K: Resource + Clone>(api: &Api<K>) -> (kube::Client, Request) {
    (api.clone().into_client(), Request::new(api.resource_url()))
}

/// How long one request may take, answer included: the API server ends every request that is
/// not a watch after its own `--request-timeout` (1 minute), so waiting longer only hangs on a
/// server that accepted the connection and went silent (kube's client has no read timeout).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn call<T: DeserializeOwned>(
    client: &kube::Client,
    req: kube::Result<http::Request<Vec<u8>>>,
    what: &str,
) -> kube::Result<T> {
    let text = send(client, req?, what, REQUEST_TIMEOUT).await?;
    decode(&text, what)
}

/// Send `req` and read the answer as text, within `limit`.
async fn send(
    client: &kube::Client,
    req: http::Request<Vec<u8>>,
    what: &str,
    limit: Duration,
) -> kube::Result<String> {
    match tokio::time::timeout(limit, client.request_text(req)).await {
        Ok(answer) => answer,
        Err(_) => Err(kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: no answer within {}s", limit.as_secs_f64()),
        )))),
    }
}

fn built(
    r: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
) -> kube::Result<http::Request<Vec<u8>>> {
    r.map_err(kube::Error::BuildRequest)
}

/// `GET` one object (as `Api::get`).
pub async fn get<K: Resource + Clone + DeserializeOwned>(api: &Api<K>, name: &str) -> kube::Result<K> {
    let (client, r) = parts(api);
    let req = built(r.get(name, &Default::default()));
    call(&client, req, &format!("get {}/{name}", api.resource_url())).await
}

/// `GET` one object, `None` when it does not exist (as `Api::get_opt`).
pub async fn get_opt<K: Resource + Clone + DeserializeOwned>(
    api: &Api<K>,
    name: &str,
) -> kube::Result<Option<K>> {
    match get(api, name).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// `LIST` (as `Api::list`).
pub async fn list<K: Resource + Clone + DeserializeOwned>(
    api: &Api<K>,
    lp: &ListParams,
) -> kube::Result<ObjectList<K>> {
    let (client, r) = parts(api);
    let req = built(r.list(lp));
    call(&client, req, &format!("list {}", api.resource_url())).await
}

/// `POST` a new object (as `Api::create`).
pub async fn create<K: Resource + Clone + Serialize + DeserializeOwned>(
    api: &Api<K>,
    pp: &PostParams,
    obj: &K,
) -> kube::Result<K> {
    let (client, r) = parts(api);
    let body = serde_json::to_vec(obj).map_err(kube::Error::SerdeError)?;
    let req = built(r.create(pp, body));
    call(&client, req, &format!("create in {}", api.resource_url())).await
}

/// `PUT` an object (as `Api::replace`).
pub async fn replace<K: Resource + Clone + Serialize + DeserializeOwned>(
    api: &Api<K>,
    name: &str,
    pp: &PostParams,
    obj: &K,
) -> kube::Result<K> {
    let (client, r) = parts(api);
    let body = serde_json::to_vec(obj).map_err(kube::Error::SerdeError)?;
    let req = built(r.replace(name, pp, body));
    call(&client, req, &format!("replace {}/{name}", api.resource_url())).await
}

/// `PATCH` an object (as `Api::patch`).
pub async fn patch<K: Resource + Clone + DeserializeOwned, P: Serialize>(
    api: &Api<K>,
    name: &str,
    pp: &PatchParams,
    patch: &Patch<P>,
) -> kube::Result<K> {
    let (client, r) = parts(api);
    let req = built(r.patch(name, pp, patch));
    call(&client, req, &format!("patch {}/{name}", api.resource_url())).await
}

/// `PATCH` an object's status subresource (as `Api::patch_status`).
pub async fn patch_status<K: Resource + Clone + DeserializeOwned, P: Serialize>(
    api: &Api<K>,
    name: &str,
    pp: &PatchParams,
    patch: &Patch<P>,
) -> kube::Result<K> {
    let (client, r) = parts(api);
    let req = built(r.patch_subresource("status", name, pp, patch));
    call(
        &client,
        req,
        &format!("patch {}/{name}/status", api.resource_url()),
    )
    .await
}

/// `DELETE` an object; the answer (the object, or a Status) is not decoded at all.
pub async fn delete<K: Resource + Clone>(api: &Api<K>, name: &str, dp: &DeleteParams) -> kube::Result<()> {
    let (client, r) = parts(api);
    let what = format!("delete {}/{name}", api.resource_url());
    send(&client, built(r.delete(name, dp))?, &what, REQUEST_TIMEOUT)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    #[test]
    fn a_failure_names_the_path_and_kind_but_never_the_value() {
        let body =
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"},"data":{"password":"hunter2!!"}}"#;
        let e = decode::<Secret>(body, "get secrets/s").unwrap_err().to_string();
        assert!(
            e.contains("get secrets/s: the answer does not decode: data.password:"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    /// An answer nested far deeper than serde_json's 128 levels that does not decode: the
    /// error still names the path (both passes grow their stack; here on a 256 KiB thread).
    #[test]
    fn a_deep_answer_that_does_not_decode_is_explained() {
        let deep = format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000));
        let body = format!(r#"{{"metadata":{{"name":"s"}},"data":{{"a":{deep}}}}}"#);
        let e = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || decode::<Secret>(&body, "get secrets/s").unwrap_err().to_string())
            .unwrap()
            .join()
            .unwrap();
        assert!(
            e.contains("get secrets/s: the answer does not decode: data.a:"),
            "{e}"
        );
    }

    /// A server that accepts the connection and never answers: the request ends with a
    /// timeout error instead of hanging (kube's client has no read timeout of its own).
    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = vec![];
            while let Ok((conn, _)) = listener.accept().await {
                open.push(conn);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let req = http::Request::get("/api/v1/namespaces/default/secrets/s")
            .body(vec![])
            .unwrap();
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            send(&client, req, "get secrets/s", Duration::from_millis(300)),
        )
        .await
        .expect("the request hung past its timeout");
        let e = outcome.unwrap_err().to_string();
        assert!(e.contains("get secrets/s: no answer within 0.3s"), "{e}");
        held.abort();
    }
}

//! Authentication, RBAC, access reviews and impersonation, checked over HTTP, with kube-rs and
//! with the real `kubectl` (`auth can-i`, `auth whoami`, `--as`): static token users,
//! ServiceAccount tokens from TokenRequest, Roles, ClusterRoles with aggregation, bindings, the
//! 403 wording, escalation prevention, and persistence across a restart.
//!
//! `kubectl_rbac_answers_as_a_real_cluster` also runs against a real cluster when
//! `CRWATCH_TEST_KUBECONFIG` names one (impersonation needs no extra users there).

mod common;

use std::time::Duration;

use crwatch_apiserver::authn::TokenUser;
use crwatch_apiserver::{ApiServer, Config, TestServer};
use serde_json::{Value, json};

const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";

async fn server() -> TestServer {
    TestServer::with_config(Config {
        users: vec![
            TokenUser::new(ALICE, "alice", "1001", &["devs"]),
            TokenUser::new(BOB, "bob", "1002", &[]),
        ],
        ..Config::default()
    })
    .await
    .expect("server starts")
}

/// A raw request over plain HTTP with a bearer token (none when empty): (status, body).
async fn call(
    t: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!("{}{path}", t.server().http_url().expect("plain HTTP is served"));
    let mut req = reqwest::Client::new().request(method.parse().expect("method"), url);
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
        .await
        .expect("answered in time")
        .expect("request sent");
    let code = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn admin(t: &TestServer, method: &str, path: &str, body: Value) -> Value {
    let token = t.server().token().to_string();
    let (code, out) = call(t, &token, method, path, Some(body), &[]).await;
    assert!((200..300).contains(&code), "{method} {path}: {code} {out}");
    out
}

async fn namespace(t: &TestServer, name: &str) {
    admin(
        t,
        "POST",
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .await;
}

async fn role(t: &TestServer, ns: &str, name: &str, rules: Value) {
    admin(
        t,
        "POST",
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name}, "rules": rules}),
    )
    .await;
}

async fn role_binding(t: &TestServer, ns: &str, name: &str, kind: &str, role: &str, subjects: Value) {
    admin(
        t,
        "POST",
        &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role}, "subjects": subjects}),
    )
    .await;
}

fn user(name: &str) -> Value {
    json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_and_unknown_tokens() {
    let t = server().await;
    let (code, _) = call(&t, "", "GET", "/version", None, &[]).await;
    assert_eq!(code, 200);
    let (code, _) = call(&t, "", "GET", "/healthz", None, &[]).await;
    assert_eq!(code, 200);
    let (code, body) = call(&t, "", "GET", "/api", None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "forbidden: User \"system:anonymous\" cannot get path \"/api\""
    );
    let (code, body) = call(&t, "", "GET", "/api/v1/namespaces/default/configmaps", None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "configmaps is forbidden: User \"system:anonymous\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    let (code, body) = call(&t, "nobody-has-this", "GET", "/version", None, &[]).await;
    assert_eq!((code, body["reason"].as_str()), (401, Some("Unauthorized")));
    // The scheme in any case; another scheme is no credential; a space before the token
    // makes it empty, which is invalid (as the real bearer-token authenticator reads it).
    let (code, _) = call(
        &t,
        "",
        "GET",
        "/apis",
        None,
        &[("Authorization", "bearer bob-token")],
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = call(
        &t,
        "",
        "GET",
        "/apis",
        None,
        &[("Authorization", "Basic Ym9iOng=")],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "forbidden: User \"system:anonymous\" cannot get path \"/apis\""
    );
    let (code, _) = call(
        &t,
        "",
        "GET",
        "/version",
        None,
        &[("Authorization", "Bearer  bob-token")],
    )
    .await;
    assert_eq!(code, 401);
    // An authenticated user gets discovery (system:discovery) and nothing else by default.
    let (code, _) = call(&t, BOB, "GET", "/apis", None, &[]).await;
    assert_eq!(code, 200);
    let (code, body) = call(&t, BOB, "GET", "/api/v1/namespaces", None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "namespaces is forbidden: User \"bob\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope"
    );
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_bindings_decide_and_denials_are_worded_as_the_real_server() {
    let t = server().await;
    namespace(&t, "team").await;
    let list = "/api/v1/namespaces/team/configmaps";
    let (code, body) = call(&t, ALICE, "GET", list, None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );
    assert_eq!(body["details"], json!({"kind": "configmaps"}));
    assert_eq!(body["reason"], "Forbidden");
    role(
        &t,
        "team",
        "cm-reader",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create"]},
               {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["open"], "verbs": ["get"]}]),
    )
    .await;
    // A binding to the group works as one to the user.
    role_binding(
        &t,
        "team",
        "read",
        "Role",
        "cm-reader",
        json!([{"kind": "Group", "name": "devs"}]),
    )
    .await;
    let (code, _) = call(&t, ALICE, "GET", list, None, &[]).await;
    assert_eq!(code, 200);
    let (code, _) = call(&t, BOB, "GET", list, None, &[]).await;
    assert_eq!(code, 403);
    // watch is its own verb.
    let (code, body) = call(&t, BOB, "GET", &format!("{list}?watch=true"), None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "configmaps is forbidden: User \"bob\" cannot watch resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let (code, _) = call(&t, ALICE, "POST", list, Some(cm), &[]).await;
    assert_eq!(code, 201);
    let (code, body) = call(&t, ALICE, "DELETE", &format!("{list}/c"), None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "configmaps \"c\" is forbidden: User \"alice\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );
    assert_eq!(body["details"], json!({"kind": "configmaps", "name": "c"}));
    // Other namespaces are not covered by a RoleBinding.
    let (code, _) = call(
        &t,
        ALICE,
        "GET",
        "/api/v1/namespaces/default/configmaps",
        None,
        &[],
    )
    .await;
    assert_eq!(code, 403);
    // resourceNames: only the named Secret.
    admin(
        &t,
        "POST",
        "/api/v1/namespaces/team/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "open"}}),
    )
    .await;
    admin(
        &t,
        "POST",
        "/api/v1/namespaces/team/secrets",
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "closed"}}),
    )
    .await;
    let (code, _) = call(
        &t,
        ALICE,
        "GET",
        "/api/v1/namespaces/team/secrets/open",
        None,
        &[],
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call(
        &t,
        ALICE,
        "GET",
        "/api/v1/namespaces/team/secrets/closed",
        None,
        &[],
    )
    .await;
    assert_eq!(code, 403);
    // Subresources and groups are named in the message.
    let (code, body) = call(
        &t,
        ALICE,
        "PUT",
        "/apis/apps/v1/namespaces/team/deployments/web/status",
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "deployments.apps \"web\" is forbidden: User \"alice\" cannot update resource \"deployments/status\" in API group \"apps\" in the namespace \"team\""
    );
    // A binding to a missing role: the reason says so, as the real authorizer's does.
    role_binding(&t, "team", "dangling", "Role", "nope", user("bob")).await;
    let (_, body) = call(&t, BOB, "GET", list, None, &[]).await;
    assert_eq!(
        body["message"],
        "configmaps is forbidden: User \"bob\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"team\": RBAC: role.rbac.authorization.k8s.io \"nope\" not found"
    );
    // Deleting the binding takes the access away at once.
    let token = t.server().token().to_string();
    let (code, _) = call(
        &t,
        &token,
        "DELETE",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings/read",
        None,
        &[],
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call(&t, ALICE, "GET", list, None, &[]).await;
    assert_eq!(code, 403);
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_until_the_account_is_deleted() {
    let t = server().await;
    namespace(&t, "apps").await;
    admin(
        &t,
        "POST",
        "/api/v1/namespaces/apps/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
    )
    .await;
    let token_path = "/api/v1/namespaces/apps/serviceaccounts/robot/token";
    let admin_token = t.server().token().to_string();
    let (code, body) = call(&t, &admin_token, "POST", token_path, Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 599}})), &[]).await;
    assert_eq!(code, 422);
    assert_eq!(
        body["message"],
        "TokenRequest.authentication.k8s.io \"robot\" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"
    );
    let (code, _) = call(
        &t,
        &admin_token,
        "POST",
        "/api/v1/namespaces/apps/serviceaccounts/ghost/token",
        Some(json!({})),
        &[],
    )
    .await;
    assert_eq!(code, 404);
    let (code, body) = call(&t, &admin_token, "POST", token_path, Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}})), &[]).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["spec"]["expirationSeconds"], 600);
    let sa_token = body["status"]["token"].as_str().unwrap().to_string();
    // whoami: SelfSubjectReview.
    let (code, body) = call(
        &t,
        &sa_token,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})),
        &[],
    )
    .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body["status"]["userInfo"]["username"],
        "system:serviceaccount:apps:robot"
    );
    assert_eq!(
        body["status"]["userInfo"]["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:apps",
            "system:authenticated"
        ])
    );
    // The SA may do nothing yet.
    let (code, body) = call(&t, &sa_token, "GET", "/api/v1/namespaces/apps/pods", None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "pods is forbidden: User \"system:serviceaccount:apps:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"apps\""
    );
    // A TokenReview (by the admin) answers for it, and for static tokens.
    let (_, review) = call(&t, &admin_token, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", Some(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": sa_token}})), &[]).await;
    assert_eq!(review["status"]["authenticated"], true);
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:apps:robot"
    );
    let (_, review) = call(
        &t,
        &admin_token,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(json!({"spec": {"token": ALICE}})),
        &[],
    )
    .await;
    assert_eq!(
        review["status"]["user"]["groups"],
        json!(["devs", "system:authenticated"])
    );
    let (_, review) = call(
        &t,
        &admin_token,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        Some(json!({"spec": {"token": "junk"}})),
        &[],
    )
    .await;
    assert!(review["status"].get("authenticated").is_none(), "{review}");
    // The kube-rs helper issues the same kind of token.
    let client = t.client_for_service_account("apps", "robot").await.unwrap();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, "apps");
    let err = cms.list(&Default::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err}");
    // ServiceAccounts may read the issuer's OIDC discovery and keys; anonymous may not.
    let (code, conf) = call(
        &t,
        &sa_token,
        "GET",
        "/.well-known/openid-configuration",
        None,
        &[],
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(conf["issuer"], "https://kubernetes.default.svc.cluster.local");
    let (code, jwks) = call(&t, &sa_token, "GET", "/openid/v1/jwks", None, &[]).await;
    assert_eq!(code, 200);
    assert_eq!(
        (jwks["keys"][0]["kty"].as_str(), jwks["keys"][0]["alg"].as_str()),
        (Some("EC"), Some("ES256"))
    );
    let (code, body) = call(&t, "", "GET", "/openid/v1/jwks", None, &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "forbidden: User \"system:anonymous\" cannot get path \"/openid/v1/jwks\""
    );
    // Deleting the ServiceAccount ends its tokens.
    let (code, _) = call(
        &t,
        &admin_token,
        "DELETE",
        "/api/v1/namespaces/apps/serviceaccounts/robot",
        None,
        &[],
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = call(&t, &sa_token, "GET", "/apis", None, &[]).await;
    assert_eq!(code, 401);
    // A new ServiceAccount of the same name is another account: the old token stays invalid.
    admin(
        &t,
        "POST",
        "/api/v1/namespaces/apps/serviceaccounts",
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
    )
    .await;
    let (code, _) = call(&t, &sa_token, "GET", "/apis", None, &[]).await;
    assert_eq!(code, 401);
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_roles_aggregate_and_access_reviews_give_the_real_reasons() {
    let t = server().await;
    namespace(&t, "team").await;
    // The bootstrap policy is there; view/edit/admin are aggregated.
    let token = t.server().token().to_string();
    let (_, view) = call(
        &t,
        &token,
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/view",
        None,
        &[],
    )
    .await;
    let has = |role: &Value, group: &str, resource: &str| {
        role["rules"].as_array().unwrap().iter().any(|r| {
            r["apiGroups"].as_array().unwrap().iter().any(|g| g == group)
                && r["resources"].as_array().unwrap().iter().any(|x| x == resource)
        })
    };
    assert!(has(&view, "", "configmaps"), "{view}");
    assert!(!has(&view, "", "secrets"));
    // A ClusterRole labelled for aggregation joins view, edit and admin.
    admin(&t, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widgets-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]}]
    })).await;
    let (_, admin_role) = call(
        &t,
        &token,
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
        None,
        &[],
    )
    .await;
    assert!(has(&admin_role, "example.com", "widgets"), "{admin_role}");
    role_binding(&t, "team", "alice-view", "ClusterRole", "view", user("alice")).await;
    // SubjectAccessReview (the admin asks about alice).
    let sar = |attrs: Value| json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "alice", "groups": ["devs"], "resourceAttributes": attrs}});
    let (code, out) = call(
        &t,
        &token,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        Some(sar(
            json!({"namespace": "team", "verb": "list", "group": "example.com", "resource": "widgets"}),
        )),
        &[],
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(
        out["status"],
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"alice-view/team\" of ClusterRole \"view\" to User \"alice\""})
    );
    let (_, out) = call(
        &t,
        &token,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        Some(sar(
            json!({"namespace": "team", "verb": "get", "resource": "secrets"}),
        )),
        &[],
    )
    .await;
    assert_eq!(out["status"], json!({"allowed": false}));
    let (code, out) = call(
        &t,
        &token,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        Some(json!({"spec": {"resourceAttributes": {"verb": "get"}}})),
        &[],
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(
        out["message"],
        "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified"
    );
    // Without system:auth-delegator, alice may not ask about others...
    let (code, _) = call(
        &t,
        ALICE,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        Some(sar(json!({"verb": "get", "resource": "pods"}))),
        &[],
    )
    .await;
    assert_eq!(code, 403);
    // ...but about herself (system:basic-user).
    let ssar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {"namespace": "team", "verb": "watch", "resource": "configmaps"}}});
    let (code, out) = call(
        &t,
        ALICE,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(ssar),
        &[],
    )
    .await;
    assert_eq!(code, 201);
    assert_eq!(out["status"]["allowed"], true);
    let nonres = json!({"spec": {"nonResourceAttributes": {"path": "/apis/apps", "verb": "get"}}});
    let (_, out) = call(
        &t,
        ALICE,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(nonres),
        &[],
    )
    .await;
    assert_eq!(
        out["status"]["reason"],
        "RBAC: allowed by ClusterRoleBinding \"system:discovery\" of ClusterRole \"system:discovery\" to Group \"system:authenticated\""
    );
    // The admin is allowed by system:masters, which gives no reason.
    let (_, out) = call(
        &t,
        &token,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(json!({"spec": {"resourceAttributes": {"verb": "delete", "resource": "nodes"}}})),
        &[],
    )
    .await;
    assert_eq!(out["status"], json!({"allowed": true}));
    // SelfSubjectRulesReview lists what alice holds in the namespace.
    let (code, out) = call(
        &t,
        ALICE,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        Some(json!({"spec": {"namespace": "team"}})),
        &[],
    )
    .await;
    assert_eq!(code, 201);
    let rules = out["status"]["resourceRules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["resources"].as_array().unwrap().iter().any(|x| x == "widgets")),
        "{out}"
    );
    assert_eq!(out["status"]["incomplete"], false);
    // Reviews are never stored.
    let (code, _) = call(
        &t,
        &token,
        "GET",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        None,
        &[],
    )
    .await;
    assert_eq!(code, 405);
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_needs_the_impersonate_verb() {
    let t = server().await;
    namespace(&t, "team").await;
    let token = t.server().token().to_string();
    // The admin acting as alice is alice.
    let (code, body) = call(
        &t,
        &token,
        "GET",
        "/api/v1/namespaces/team/configmaps",
        None,
        &[("Impersonate-User", "alice")],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );
    // Alice may not impersonate bob...
    let (code, body) = call(
        &t,
        ALICE,
        "GET",
        "/api/v1/namespaces/team/configmaps",
        None,
        &[("Impersonate-User", "bob")],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    // ...until a role lets her, and then she has bob's rights, not hers.
    admin(&t, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "impersonate-bob"},
        "rules": [{"apiGroups": [""], "resources": ["users"], "resourceNames": ["bob"], "verbs": ["impersonate"]}]
    })).await;
    admin(&t, "POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "alice-as-bob"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "impersonate-bob"}, "subjects": user("alice")
    })).await;
    role(
        &t,
        "team",
        "cm",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}]),
    )
    .await;
    role_binding(&t, "team", "bob-cm", "Role", "cm", user("bob")).await;
    let (code, _) = call(
        &t,
        ALICE,
        "GET",
        "/api/v1/namespaces/team/configmaps",
        None,
        &[("Impersonate-User", "bob")],
    )
    .await;
    assert_eq!(code, 200);
    let (_, who) = call(
        &t,
        ALICE,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(json!({})),
        &[("Impersonate-User", "bob")],
    )
    .await;
    assert_eq!(
        who["status"]["userInfo"],
        json!({"username": "bob", "groups": ["system:authenticated"]})
    );
    // TestServer::client_as impersonates the same way.
    let as_bob = t.client_as("bob", &[]).await.unwrap();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(as_bob, "team");
    cms.list(&Default::default())
        .await
        .expect("bob may list configmaps in team");
    let as_devs = t.client_as("carol", &["devs"]).await.unwrap();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(as_devs, "team");
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(
            s.message,
            "configmaps is forbidden: User \"carol\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"team\""
        ),
        other => panic!("carol may not list: {other:?}"),
    }
    // Groups need their own permission.
    let (code, body) = call(
        &t,
        ALICE,
        "GET",
        "/api/v1/namespaces/team/configmaps",
        None,
        &[
            ("Impersonate-User", "bob"),
            ("Impersonate-Group", "system:masters"),
        ],
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "groups \"system:masters\" is forbidden: User \"alice\" cannot impersonate resource \"groups\" in API group \"\" at the cluster scope"
    );
    // A group without a user is refused as the real filter refuses it.
    let (code, _) = call(&t, &token, "GET", "/api", None, &[("Impersonate-Group", "devs")]).await;
    assert_eq!(code, 500);
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_is_prevented_unless_escalate_or_bind_is_held() {
    let t = server().await;
    namespace(&t, "team").await;
    role(&t, "team", "rbac-manager", json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create", "update", "patch", "get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    ])).await;
    role_binding(&t, "team", "alice-rbac", "Role", "rbac-manager", user("alice")).await;
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles";
    let ok = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm-read"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
    let (code, body) = call(&t, ALICE, "POST", roles, Some(ok), &[]).await;
    assert_eq!(code, 201, "{body}");
    let bad = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "secrets"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]}]});
    let (code, body) = call(&t, ALICE, "POST", roles, Some(bad.clone()), &[]).await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "roles.rbac.authorization.k8s.io \"secrets\" is forbidden: user \"alice\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"list\"]}"
    );
    // Nothing was stored.
    let token = t.server().token().to_string();
    let (code, _) = call(&t, &token, "GET", &format!("{roles}/secrets"), None, &[]).await;
    assert_eq!(code, 404);
    // Binding a role with more than alice holds: refused; binding one she holds: fine.
    let bindings = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings";
    let bind_admin = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "b"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"}, "subjects": user("bob")});
    let (code, body) = call(&t, ALICE, "POST", bindings, Some(bind_admin.clone()), &[]).await;
    assert_eq!(code, 403);
    assert!(
        body["message"].as_str().unwrap().starts_with("rolebindings.rbac.authorization.k8s.io \"b\" is forbidden: user \"alice\" (groups=[\"devs\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n"),
        "{body}"
    );
    let bind_read = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "r"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-read"}, "subjects": user("bob")});
    let (code, body) = call(&t, ALICE, "POST", bindings, Some(bind_read), &[]).await;
    assert_eq!(code, 201, "{body}");
    // The bind and escalate verbs lift the check.
    role(&t, "team", "binder", json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["admin"], "verbs": ["bind"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}
    ])).await;
    role_binding(&t, "team", "alice-binder", "Role", "binder", user("alice")).await;
    let (code, body) = call(&t, ALICE, "POST", bindings, Some(bind_admin), &[]).await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = call(&t, ALICE, "POST", roles, Some(bad), &[]).await;
    assert_eq!(code, 201, "{body}");
    t.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_objects_and_service_account_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let config = || Config {
        state_file: Some(state.clone()),
        users: vec![TokenUser::new(ALICE, "alice", "1001", &[])],
        ..Config::default()
    };
    let s = ApiServer::start(config()).await.unwrap();
    s.apply(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot", "namespace": "default"}}))
        .await
        .unwrap();
    s.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "robot-view", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}]}))
        .await
        .unwrap();
    let token = s.service_account_token("default", "robot", 3600).unwrap();
    s.shutdown().await.unwrap();
    let s = ApiServer::start(config()).await.unwrap();
    let url = format!("{}/api/v1/namespaces/default/configmaps", s.http_url().unwrap());
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "the token and the binding survived");
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/namespaces/default/secrets",
            s.http_url().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    s.shutdown().await.unwrap();
}

fn kubectl_available() -> bool {
    std::process::Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `kubectl` with a timeout: (exit code, stdout, stderr).
fn run(mut cmd: std::process::Command) -> (i32, String, String) {
    let out = cmd.output().expect("kubectl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_whoami_and_as_answer_as_on_a_real_cluster() {
    if !kubectl_available() {
        eprintln!("kubectl not found: skipping the kubectl RBAC checks");
        return;
    }
    let t = server().await;
    namespace(&t, "team").await;
    role(
        &t,
        "team",
        "cm-reader",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]),
    )
    .await;
    role_binding(&t, "team", "read", "Role", "cm-reader", user("alice")).await;
    let kc = |args: &[&str]| {
        let mut c = t.kubectl();
        c.args(args);
        run(c)
    };
    assert_eq!(
        kc(&[
            "auth",
            "can-i",
            "list",
            "configmaps",
            "-n",
            "team",
            "--as",
            "alice"
        ]),
        (0, "yes\n".into(), String::new())
    );
    let (code, out, _) = kc(&[
        "auth",
        "can-i",
        "delete",
        "configmaps",
        "-n",
        "team",
        "--as",
        "alice",
    ]);
    assert_eq!((code, out.as_str()), (1, "no\n"));
    assert_eq!(kc(&["auth", "can-i", "delete", "nodes"]).1, "yes\n");
    let (code, out, err) = kc(&["auth", "can-i", "--list", "-n", "team", "--as", "alice"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("configmaps "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["configmaps", "[]", "[]", "[get", "list]"]
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("selfsubjectaccessreviews.authorization.k8s.io")),
        "{out}"
    );
    let (code, out, err) = kc(&["auth", "whoami", "--as", "alice", "--as-group", "devs"]);
    // --as-group needs the impersonate verb on groups: the admin has it.
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alice") && out.contains("devs"), "{out}");
    let (code, _, err) = kc(&["get", "configmaps", "-n", "default", "--as", "alice"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    // kubectl's own RBAC commands (protobuf bodies), and a ServiceAccount token from
    // `kubectl create token`.
    let (code, _, err) = kc(&["create", "serviceaccount", "robot", "-n", "team"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kc(&[
        "create",
        "rolebinding",
        "robot-edit",
        "--clusterrole=edit",
        "--serviceaccount=team:robot",
        "-n",
        "team",
    ]);
    assert_eq!(code, 0, "{err}");
    let sa = "system:serviceaccount:team:robot";
    assert_eq!(
        kc(&[
            "auth",
            "can-i",
            "create",
            "deployments.apps",
            "-n",
            "team",
            "--as",
            sa
        ])
        .1,
        "yes\n"
    );
    assert_eq!(
        kc(&["auth", "can-i", "create", "roles", "-n", "team", "--as", sa]).1,
        "no\n"
    );
    let (code, token, err) = kc(&["create", "token", "robot", "-n", "team", "--duration=10m"]);
    assert_eq!(code, 0, "{err}");
    let robot_kc = t.kubeconfig_with_token(token.trim()).unwrap();
    let mut c = t.kubectl();
    c.env("KUBECONFIG", &robot_kc)
        .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(run(c).1, sa);
    let mut c = t.kubectl();
    c.env("KUBECONFIG", &robot_kc)
        .args(["create", "configmap", "made-by-robot", "-n", "team"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = kc(&["create", "token", "robot", "-n", "team", "--duration=5m"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("may not specify a duration less than 10 minutes"),
        "{err}"
    );
    // With alice's own kubeconfig.
    let alice_kc = t.kubeconfig_with_token(ALICE).unwrap();
    let mut c = t.kubectl();
    c.env("KUBECONFIG", &alice_kc)
        .args(["get", "configmaps", "-n", "team", "-o", "name"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let mut c = t.kubectl();
    c.env("KUBECONFIG", &alice_kc)
        .args(["auth", "can-i", "get", "configmaps", "-n", "team"]);
    assert_eq!(run(c).1, "yes\n");
    let mut c = t.kubectl();
    c.env("KUBECONFIG", &alice_kc)
        .args(["get", "secrets", "-n", "team", "--as", "bob"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "Error from server (Forbidden): users \"bob\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
    );
    t.shutdown().await.unwrap();
}

/// The binary with `--token-auth-file`: its users authenticate and RBAC applies to them; a
/// malformed file stops it at start with the line at fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_users_from_token_auth_file() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "t-alice,alice,1001,\"devs,qa\"\nt-bob,bob,1002\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
        .args(["--port", "0", "--http-port", "0", "--kubeconfig"])
        .arg(dir.path().join("kubeconfig"))
        .arg("--token-auth-file")
        .arg(&tokens)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("crwatch-apiserver starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let _guard = Kill(child);
    let mut http = None;
    let reader = BufReader::new(stdout);
    for line in reader.lines() {
        let line = line.expect("banner line");
        if let Some(at) = line.find("http://") {
            http = line[at..].split_whitespace().next().map(String::from);
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let http = http.expect("the banner names the plain HTTP URL");
    let get = |token: &'static str, path: &str| {
        let url = format!("{http}{path}");
        async move {
            let resp = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, who) = {
        let url = format!("{http}/apis/authentication.k8s.io/v1/selfsubjectreviews");
        let resp = reqwest::Client::new()
            .post(url)
            .bearer_auth("t-alice")
            .header("content-type", "application/json")
            .body(json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).to_string())
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!(code, 201);
    assert_eq!(
        who["status"]["userInfo"],
        json!({"username": "alice", "uid": "1001", "groups": ["devs", "qa", "system:authenticated"]})
    );
    let (code, body) = get("t-bob", "/api/v1/namespaces/default/secrets").await;
    assert_eq!(code, 403);
    assert_eq!(
        body["message"],
        "secrets is forbidden: User \"bob\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(get("t-carol", "/version").await.0, 401);
    // A malformed file: the binary refuses to start and says which line.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "t1,alice,1\nt2,bob\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_crwatch-apiserver"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(dir.path().join("kubeconfig2"))
        .arg("--token-auth-file")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must have at least 3 columns (token, user name, user uid), found 2 (line 2)"),
        "{err}"
    );
}

/// RBAC through kubectl and impersonation only, so the same steps run on a real cluster
/// (`CRWATCH_TEST_KUBECONFIG`) and must print the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rbac_answers_as_a_real_cluster() {
    for t in common::targets().await {
        let ns = t.namespace("rbac").await;
        let user = "crwatch-rbac-test-user";
        t.kubectl_ok(
            &[
                "create",
                "role",
                "cm-reader",
                "--verb=get,list",
                "--resource=configmaps",
                "-n",
                &ns,
            ],
            None,
        );
        t.kubectl_ok(
            &[
                "create",
                "rolebinding",
                "read",
                "--role=cm-reader",
                &format!("--user={user}"),
                "-n",
                &ns,
            ],
            None,
        );
        t.kubectl_ok(&["create", "configmap", "c", "-n", &ns], None);
        let can = |verb: &str, what: &str| {
            let mut cmd = t.kubectl();
            cmd.args(["auth", "can-i", verb, what, "-n", &ns, "--as", user]);
            String::from_utf8_lossy(&t.run(cmd, None).stdout)
                .trim()
                .to_string()
        };
        // RBAC caches on a real cluster may take a moment to see a new binding.
        common::eventually(30, "the binding to take effect", || {
            let ok = can("list", "configmaps") == "yes";
            async move { ok.then_some(()) }
        })
        .await;
        assert_eq!(can("get", "configmaps"), "yes");
        assert_eq!(can("delete", "configmaps"), "no");
        assert_eq!(can("get", "secrets"), "no");
        let out = t.kubectl_ok(
            &["get", "configmap", "c", "-n", &ns, "-o", "name", "--as", user],
            None,
        );
        assert_eq!(out, "configmap/c\n");
        let err = t.kubectl_err(&["get", "secrets", "-n", &ns, "--as", user], None);
        assert_eq!(
            err.trim(),
            format!(
                "Error from server (Forbidden): secrets is forbidden: User \"{user}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{ns}\""
            ),
            "[{}]",
            t.name
        );
        let err = t.kubectl_err(&["delete", "configmap", "c", "-n", &ns, "--as", user], None);
        assert_eq!(
            err.trim(),
            format!(
                "Error from server (Forbidden): configmaps \"c\" is forbidden: User \"{user}\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"{ns}\""
            ),
            "[{}]",
            t.name
        );
        let err = t.kubectl_err(&["get", "nodes", "--as", user], None);
        assert_eq!(
            err.trim(),
            format!(
                "Error from server (Forbidden): nodes is forbidden: User \"{user}\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
            ),
            "[{}]",
            t.name
        );
        t.cleanup().await;
    }
}

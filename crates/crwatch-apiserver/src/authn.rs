//! Authentication as the real kube-apiserver does it: bearer tokens (the admin token, static
//! token users as `--token-auth-file` defines them, and ServiceAccount tokens the server signs
//! itself for TokenRequest), `system:anonymous` for requests without a token, and the groups
//! the real authenticators add (`system:authenticated`, `system:serviceaccounts`, ...).
//!
//! ServiceAccount tokens are JWTs signed with ES256 by a key the server keeps in its
//! [`crate::Identity`] (so they survive a restart with a state file). They carry the
//! ServiceAccount's uid, and stop authenticating when that ServiceAccount is deleted (or
//! replaced by one of the same name), as bound tokens do on a real cluster.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use ring::signature::{self, KeyPair};
use serde_json::{Value, json};

use crate::registry::GroupResource;
use crate::store::Store;

/// The group whose members bypass authorization (`user.SystemPrivilegedGroup`).
pub const SYSTEM_MASTERS: &str = "system:masters";
/// Added to every authenticated user.
pub const ALL_AUTHENTICATED: &str = "system:authenticated";
/// The group of anonymous requests.
pub const ALL_UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user of requests without credentials.
pub const ANONYMOUS: &str = "system:anonymous";
/// The user the admin token authenticates as.
pub const ADMIN_USER: &str = "system:admin";
/// The prefix of ServiceAccount user names.
pub const SA_PREFIX: &str = "system:serviceaccount:";
/// The issuer and default audience of ServiceAccount tokens (the real default for a cluster
/// whose DNS domain is `cluster.local`).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The shortest lifetime a TokenRequest may ask for (`spec.expirationSeconds`).
pub const MIN_TOKEN_SECONDS: i64 = 600;
/// The longest lifetime a TokenRequest may ask for (2^32 seconds).
pub const MAX_TOKEN_SECONDS: i64 = 1 << 32;

/// Who made a request: `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name.
    pub name: String,
    /// Uid (may be empty).
    pub uid: String,
    /// Groups, in order.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// `system:anonymous` in `system:unauthenticated`.
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS.into(),
            groups: vec![ALL_UNAUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// The admin token's user: a member of `system:masters`.
    pub fn admin() -> Self {
        UserInfo {
            name: ADMIN_USER.into(),
            groups: vec![SYSTEM_MASTERS.into(), ALL_AUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// A ServiceAccount's user with the groups the real token authenticator gives it.
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> Self {
        UserInfo {
            name: format!("{SA_PREFIX}{namespace}:{name}"),
            uid: uid.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                ALL_AUTHENTICATED.into(),
            ],
            extra: BTreeMap::new(),
        }
    }

    /// Whether the user is in `system:masters` (and so bypasses RBAC).
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == SYSTEM_MASTERS)
    }

    /// `(namespace, name)` if this is a ServiceAccount's user name.
    pub fn service_account_of(name: &str) -> Option<(&str, &str)> {
        let rest = name.strip_prefix(SA_PREFIX)?;
        let (ns, sa) = rest.split_once(':')?;
        (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
    }

    /// The `userInfo` JSON of reviews (`authentication.k8s.io/v1 UserInfo`).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.name});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.groups.is_empty() {
            v["groups"] = json!(self.groups);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// A static token user, as one line of `--token-auth-file` defines it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The bearer token.
    pub token: String,
    /// User name.
    pub name: String,
    /// Uid.
    pub uid: String,
    /// Groups (`system:authenticated` is added when authenticating).
    pub groups: Vec<String>,
}

impl std::fmt::Debug for TokenUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("TokenUser")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl TokenUser {
    /// A user with a token, name, uid and groups.
    pub fn new(token: &str, name: &str, uid: &str, groups: &[&str]) -> Self {
        TokenUser {
            token: token.into(),
            name: name.into(),
            uid: uid.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// Split one CSV record as Go's `encoding/csv` does for the cases token files use: commas
/// separate fields, double quotes enclose fields that hold commas, `""` is a quote inside.
fn csv_record(line: &str) -> Result<Vec<String>, String> {
    let mut fields = vec![];
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cur.push('"');
                } else {
                    quoted = false;
                    match chars.peek() {
                        None | Some(',') => {}
                        Some(_) => return Err("extraneous or missing \" in quoted-field".into()),
                    }
                }
            }
            '"' => return Err("bare \" in non-quoted-field".into()),
            ',' if !quoted => {
                fields.push(std::mem::take(&mut cur));
                at_start = true;
            }
            c => {
                cur.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        return Err("extraneous or missing \" in quoted-field".into());
    }
    fields.push(cur);
    Ok(fields)
}

/// Parse a `--token-auth-file`: `token,user,uid,"group1,group2"` per line, as the real
/// `tokenfile.NewCSV` reads it (at least three columns; a record with an empty token is
/// skipped; a later duplicate token wins). Blank lines are skipped as Go's CSV reader does.
pub fn parse_token_file(text: &str) -> Result<Vec<TokenUser>, String> {
    let mut users: Vec<TokenUser> = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let record = csv_record(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if record.len() < 3 {
            return Err(format!(
                "must have at least 3 columns (token, user name, user uid), found {} (line {})",
                record.len(),
                i + 1
            ));
        }
        if record[0].is_empty() {
            continue;
        }
        let groups = record
            .get(3)
            .map(|g| g.split(',').map(String::from).collect())
            .unwrap_or_default();
        users.retain(|u| u.token != record[0]);
        users.push(TokenUser {
            token: record[0].clone(),
            name: record[1].clone(),
            uid: record[2].clone(),
            groups,
        });
    }
    Ok(users)
}

/// The ServiceAccount token signing key (ECDSA P-256, PKCS#8).
pub struct SigningKey {
    pkcs8: Vec<u8>,
    pair: signature::EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let doc = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "generating the service account signing key failed".to_string())?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A key from its PKCS#8 bytes.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let pair =
            signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|e| format!("the service account signing key is not usable: {e}"))?;
        // As the real server derives `kid`: a hash of the public key (here its first bytes,
        // base64url, which is just as stable).
        let kid = b64url(&pair.public_key().as_ref()[1..33]);
        Ok(SigningKey {
            pkcs8: pkcs8.to_vec(),
            pair,
            kid,
        })
    }

    /// The public key as a JWK Set (`/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        // An uncompressed P-256 point: 0x04, then X and Y (32 bytes each).
        let (x, y) = if point.len() == 65 {
            (b64url(&point[1..33]), b64url(&point[33..65]))
        } else {
            (String::new(), String::new())
        };
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}]})
    }

    /// The key as base64 PKCS#8 (what the identity keeps).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.pkcs8)
    }

    /// A key from [`SigningKey::to_base64`].
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("the service account signing key is not base64: {e}"))?;
        Self::from_pkcs8(&bytes)
    }

    /// A signed JWT with these claims.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .pair
            .sign(&rng, input.as_bytes())
            .map_err(|_| "signing a token failed".to_string())?;
        Ok(format!("{input}.{}", b64url(sig.as_ref())))
    }

    /// The claims of a JWT this key signed, if the signature verifies (expiry not checked).
    pub fn verify(&self, token: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let dec = |x: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(x).ok();
        let header: Value = serde_json::from_slice(&dec(h)?).ok()?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return None;
        }
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        );
        public.verify(format!("{h}.{c}").as_bytes(), &dec(s)?).ok()?;
        serde_json::from_slice(&dec(c)?).ok()
    }
}

/// What a bearer token turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Authenticated {
    /// A known user (with the groups the real authenticators add).
    User(UserInfo),
    /// The token is not valid: 401.
    Invalid,
}

/// The token authenticators together.
pub struct Authenticator {
    admin_token: String,
    users: HashMap<String, UserInfo>,
    key: SigningKey,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

fn sa_gr() -> GroupResource {
    GroupResource {
        group: String::new(),
        resource: "serviceaccounts".into(),
    }
}

impl Authenticator {
    /// The admin token, static users and the ServiceAccount signing key.
    pub fn new(admin_token: String, users: &[TokenUser], key: SigningKey) -> Self {
        let users = users
            .iter()
            .map(|u| {
                let mut groups = u.groups.clone();
                if !groups.iter().any(|g| g == ALL_AUTHENTICATED) {
                    groups.push(ALL_AUTHENTICATED.into());
                }
                (
                    u.token.clone(),
                    UserInfo {
                        name: u.name.clone(),
                        uid: u.uid.clone(),
                        groups,
                        extra: BTreeMap::new(),
                    },
                )
            })
            .collect();
        Authenticator {
            admin_token,
            users,
            key,
        }
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Who a bearer token sent to this server belongs to. ServiceAccount tokens are checked
    /// against the store: the ServiceAccount must still exist with the uid the token was
    /// issued for; and their audiences must include the server's (the issuer).
    pub fn authenticate(&self, token: &str, store: &Store, now: i64) -> Authenticated {
        self.authenticate_for(token, store, now, &[ISSUER.to_string()]).0
    }

    /// [`Authenticator::authenticate`] for the audiences a TokenReview names: the token must be
    /// meant for one of them (static tokens are meant for this server only, as the real
    /// audience-agnostic authenticators are); also returns the audiences it matched.
    pub fn authenticate_for(
        &self,
        token: &str,
        store: &Store,
        now: i64,
        audiences: &[String],
    ) -> (Authenticated, Vec<String>) {
        let token = token.trim();
        if token.is_empty() {
            return (Authenticated::Invalid, vec![]);
        }
        let for_server: Vec<String> = audiences.iter().filter(|a| *a == ISSUER).cloned().collect();
        let static_user = if token == self.admin_token {
            Some(UserInfo::admin())
        } else {
            self.users.get(token).cloned()
        };
        if let Some(u) = static_user {
            return if for_server.is_empty() {
                (Authenticated::Invalid, vec![])
            } else {
                (Authenticated::User(u), for_server)
            };
        }
        match self.service_account_token(token, store, now, audiences) {
            Some((u, matched)) => (Authenticated::User(u), matched),
            None => (Authenticated::Invalid, vec![]),
        }
    }

    fn service_account_token(
        &self,
        token: &str,
        store: &Store,
        now: i64,
        audiences: &[String],
    ) -> Option<(UserInfo, Vec<String>)> {
        let claims = self.key.verify(token)?;
        let token_aud: Vec<String> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            _ => vec![],
        };
        let matched: Vec<String> = audiences
            .iter()
            .filter(|a| token_aud.contains(a))
            .cloned()
            .collect();
        if matched.is_empty() {
            return None;
        }
        if claims.get("iss").and_then(Value::as_str) != Some(ISSUER) {
            return None;
        }
        let exp = claims.get("exp").and_then(Value::as_i64)?;
        let nbf = claims.get("nbf").and_then(Value::as_i64).unwrap_or(0);
        if now >= exp || now < nbf {
            return None;
        }
        let k = claims.get("kubernetes.io")?;
        let ns = k.get("namespace").and_then(Value::as_str)?;
        let sa = k.get("serviceaccount")?;
        let name = sa.get("name").and_then(Value::as_str)?;
        let uid = sa.get("uid").and_then(Value::as_str)?;
        let stored = store.get(&sa_gr(), &(ns.to_string(), name.to_string()))?;
        let stored_uid = stored.pointer("/metadata/uid").and_then(Value::as_str)?;
        if stored_uid != uid || stored.pointer("/metadata/deletionTimestamp").is_some() {
            return None;
        }
        let mut user = UserInfo::service_account(ns, name, uid);
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            user.extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                vec![format!("JTI={jti}")],
            );
        }
        Some((user, matched))
    }

    /// A token for a ServiceAccount (namespace, name, uid) valid from `now` for `seconds`,
    /// for the audiences given (the issuer when empty).
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        now: i64,
        seconds: i64,
    ) -> Result<String, String> {
        let aud: Vec<String> = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        let claims = json!({
            "aud": aud,
            "exp": now + seconds,
            "iat": now,
            "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": uid},
            },
            "nbf": now,
            "sub": format!("{SA_PREFIX}{namespace}:{name}"),
        });
        self.key.sign(&claims)
    }
}

/// The OIDC discovery document of the ServiceAccount issuer
/// (`/.well-known/openid-configuration`), as the real server publishes it.
pub fn openid_configuration() -> Value {
    json!({
        "issuer": ISSUER,
        "jwks_uri": format!("{ISSUER}/openid/v1/jwks"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}

tokio::task_local! {
    /// The user a request is served for, while it is (admission webhooks show it).
    static REQUEST_USER: UserInfo;
}

/// Run `f` (serving one request) on behalf of `user`.
pub async fn with_user<F: std::future::Future>(user: UserInfo, f: F) -> F::Output {
    REQUEST_USER.scope(user, f).await
}

/// The `userInfo` of an AdmissionReview for a write by `name`: the requester's name, uid,
/// groups and extra while a request for that user is served; the server's own writes (and
/// anything outside a request) are a `system:masters` member's.
pub fn admission_user_info(name: &str) -> Value {
    REQUEST_USER
        .try_with(|u| (u.name == name).then(|| u.to_json()))
        .ok()
        .flatten()
        .unwrap_or_else(|| json!({"username": name, "groups": [SYSTEM_MASTERS, ALL_AUTHENTICATED]}))
}

/// The time now in Unix seconds.
pub fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_parse_like_tokenfile_new_csv() {
        let users =
            parse_token_file("t1,alice,1,\"dev,ops\"\n\n,empty,2\nt2,bob,3\nt1,carol,4,qa\n").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].name, "bob");
        assert!(users[0].groups.is_empty());
        assert_eq!(users[1].name, "carol");
        assert_eq!(users[1].groups, ["qa"]);
        let users = parse_token_file("t1,alice,1,\"dev,ops\"").unwrap();
        assert_eq!(users[0].groups, ["dev", "ops"]);
        let err = parse_token_file("t1,alice").unwrap_err();
        assert!(err.contains("at least 3 columns"), "{err}");
        assert!(parse_token_file("t1,al\"ice,1").is_err());
    }

    #[tokio::test]
    async fn admission_sees_the_requester() {
        assert_eq!(
            admission_user_info("system:admin"),
            json!({"username": "system:admin", "groups": ["system:masters", "system:authenticated"]})
        );
        let sa = UserInfo::service_account("ns", "sa", "u1");
        let seen = with_user(sa, async { admission_user_info("system:serviceaccount:ns:sa") }).await;
        assert_eq!(
            seen,
            json!({"username": "system:serviceaccount:ns:sa", "uid": "u1",
                   "groups": ["system:serviceaccounts", "system:serviceaccounts:ns", "system:authenticated"]})
        );
    }

    #[test]
    fn debug_never_shows_tokens() {
        let u = TokenUser::new("sekrit", "alice", "1", &["g"]);
        assert!(!format!("{u:?}").contains("sekrit"));
    }

    #[test]
    fn service_account_tokens_verify_and_expire() {
        let store = Store::new(100, 100);
        store
            .create(
                &sa_gr(),
                json!({"metadata": {"namespace": "ns", "name": "sa", "uid": "u1"}}),
            )
            .unwrap();
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_base64(&key.to_base64()).unwrap();
        let a = Authenticator::new("admin".into(), &[], again);
        let t = a.issue("ns", "sa", "u1", &[], 1000, 600).unwrap();
        match a.authenticate(&t, &store, 1000) {
            Authenticated::User(u) => {
                assert_eq!(u.name, "system:serviceaccount:ns:sa");
                assert_eq!(
                    u.groups,
                    [
                        "system:serviceaccounts",
                        "system:serviceaccounts:ns",
                        "system:authenticated"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.authenticate(&t, &store, 1600), Authenticated::Invalid);
        // Another uid (the ServiceAccount was replaced): no longer valid.
        let t2 = a.issue("ns", "sa", "u0", &[], 1000, 600).unwrap();
        assert_eq!(a.authenticate(&t2, &store, 1000), Authenticated::Invalid);
        // Tampered: invalid.
        let mut bad = t.clone();
        bad.insert(bad.len() - 2, 'A');
        bad.pop();
        assert_eq!(a.authenticate(&bad, &store, 1000), Authenticated::Invalid);
        // Meant for another audience: not for this server, but for a TokenReview naming it.
        let vault = a
            .issue("ns", "sa", "u1", &["vault".to_string()], 1000, 600)
            .unwrap();
        assert_eq!(a.authenticate(&vault, &store, 1000), Authenticated::Invalid);
        let (who, aud) = a.authenticate_for(&vault, &store, 1000, &["vault".to_string(), "x".to_string()]);
        assert!(matches!(who, Authenticated::User(_)));
        assert_eq!(aud, ["vault"]);
        assert_eq!(
            a.authenticate_for("admin", &store, 0, &["vault".to_string()]).0,
            Authenticated::Invalid
        );
        // Signed by another key: invalid.
        let other = Authenticator::new("x".into(), &[], SigningKey::generate().unwrap());
        let t3 = other.issue("ns", "sa", "u1", &[], 1000, 600).unwrap();
        assert_eq!(a.authenticate(&t3, &store, 1000), Authenticated::Invalid);
        assert_eq!(
            a.authenticate("admin", &store, 0),
            Authenticated::User(UserInfo::admin())
        );
    }

    #[test]
    fn static_users_get_system_authenticated() {
        let store = Store::new(100, 100);
        let a = Authenticator::new(
            "admin".into(),
            &[TokenUser::new("tok", "alice", "7", &["dev"])],
            SigningKey::generate().unwrap(),
        );
        let Authenticated::User(u) = a.authenticate("tok", &store, 0) else {
            panic!()
        };
        assert_eq!(u.groups, ["dev", "system:authenticated"]);
        assert_eq!(a.authenticate("nope", &store, 0), Authenticated::Invalid);
    }
}

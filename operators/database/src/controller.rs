//! The reconciler: makes a `Database` real on its server (database, users, credentials
//! Secret), reports what it found in `status` (written only when it changes), and cleans up
//! behind the finalizer `stable.example.com/database-protection` according to
//! `deletionPolicy`.
//!
//! Every step is idempotent and names are derived from the object, so a reconcile that dies
//! half-way (operator killed, server gone) converges on the next run without duplicates or
//! leaks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use crwatch::conditions::{Condition, ConditionStatus, patch_status_if_changed, set_condition};
use crwatch::controller::{Action, ReconcileError, Request};
use crwatch::events::{EventType, Recorder};
use crwatch::finalizer::{Event, FinalizerError, finalizer};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams, ResourceExt};
use kube::{Client, Resource};

use crate::config::Server;
use crate::engine::{Engine, EngineError, UserChange, version_matches};
use crate::naming;
use crate::password::Password;
use crate::quantity;
use crate::types::{Database, DatabaseEngine, DatabasePhase, DatabaseStatus, DeletionPolicy};
use crate::validate::{self, FieldError};

/// The finalizer that guards deletion until the server side is cleaned up.
pub const FINALIZER: &str = "stable.example.com/database-protection";
/// Label on the credentials Secrets, so the operator watches only its own Secrets.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "database-operator");
/// How often a Ready database is looked at again (to refresh `status.actualSize`).
pub const RESYNC: Duration = Duration::from_secs(300);

/// The longest one reconcile may take before it is abandoned and retried.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before looking again at a failure retrying cannot fix by itself.
pub const PERMANENT_RETRY: Duration = Duration::from_secs(120);

/// What the reconciler needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Servers by name, each with its engine (connections are pooled and lazy).
    pub servers: BTreeMap<String, (Server, Engine)>,
    /// Events.
    pub recorder: Recorder,
}

impl Context {
    /// Connect (lazily) to every server.
    pub fn new(client: Client, servers: Vec<Server>, recorder: Recorder) -> Result<Self, EngineError> {
        let mut map = BTreeMap::new();
        for s in servers {
            let engine = Engine::connect(s.engine, &s.admin_dsn)?;
            map.insert(s.name.clone(), (s, engine));
        }
        Ok(Self {
            client,
            servers: map,
            recorder,
        })
    }
}

/// Why a reconcile step failed.
#[derive(Debug)]
struct Failure {
    /// The `Ready`/`Degraded` reason.
    reason: &'static str,
    message: String,
    transient: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl Failure {
    fn engine(e: EngineError) -> Self {
        let transient = e.is_transient();
        Self {
            reason: if transient {
                "ServerUnreachable"
            } else {
                "ServerRejected"
            },
            message: e.to_string(),
            transient,
        }
    }

    fn kube(what: &str, e: kube::Error) -> Self {
        Self {
            reason: "ApiError",
            message: format!("{what}: {e}"),
            transient: true,
        }
    }
}

/// Reconcile one `Database`.
pub async fn reconcile(req: Request<Database>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    // Deletion runs behind the finalizer while the object still exists; once it is gone there
    // is nothing left to do.
    let Request::Apply(db) = req else {
        return Ok(Action::done());
    };
    let api: Api<Database> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let name = db.name_any();
    let work = finalizer(&api, FINALIZER, db, |event| async {
        match event {
            Event::Apply(db) => apply(&db, &ctx).await,
            Event::Cleanup(db) => cleanup(&db, &ctx).await,
        }
    });
    // A call that never returns (a server holding a lock for a session that died with a killed
    // predecessor, a half-open connection) must not pin this object's worker forever: give up
    // and retry with backoff. Every step is idempotent, so starting over is safe.
    let Ok(result) = tokio::time::timeout(RECONCILE_TIMEOUT, work).await else {
        return Err(ReconcileError::transient(anyhow::anyhow!(
            "reconciling {name} took longer than {RECONCILE_TIMEOUT:?}; retrying"
        )));
    };
    match result {
        Ok(action) => Ok(action),
        Err(FinalizerError::ApplyFailed { source, .. } | FinalizerError::CleanupFailed { source, .. }) => {
            if source.transient {
                // Retried with the queue's growing per-item backoff.
                Err(ReconcileError::transient(anyhow::anyhow!("{source}")))
            } else {
                // Refused for a reason an admin has to fix (permissions, a foreign Secret in
                // the way): status and an Event say so; look again now and then, not in a storm.
                Ok(Action::requeue_after(PERMANENT_RETRY))
            }
        }
        Err(e) => Err(ReconcileError::transient(anyhow::anyhow!("{e}"))),
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn condition(type_: &str, status: bool, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    let s = if status {
        ConditionStatus::True
    } else {
        ConditionStatus::False
    };
    let c = Condition::new(type_, s, reason, message);
    match generation {
        Some(g) => c.with_observed_generation(g),
        None => c,
    }
}

/// Write `status` if it differs from what the object has; true when written.
async fn write_status(ctx: &Context, db: &Database, status: &DatabaseStatus) -> Result<bool, Failure> {
    let api: Api<Database> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    let mut value = serde_json::to_value(status).map_err(|e| Failure {
        reason: "Internal",
        message: e.to_string(),
        transient: true,
    })?;
    // An empty list is left out when serialized, and a merge patch leaves absent keys alone:
    // say null so removing the last user clears `status.users` on the server too.
    if status.users.is_empty() {
        value["users"] = serde_json::Value::Null;
    }
    patch_status_if_changed(&api, &db.name_any(), db, value)
        .await
        .map_err(|e| Failure::kube("writing status", e))
}

async fn event(ctx: &Context, db: &Database, type_: EventType, reason: &str, message: &str) {
    // Events are best effort: a failure to record one must not fail the reconcile.
    if let Err(e) = ctx
        .recorder
        .publish(&db.object_ref(&()), type_, reason, message, "Reconcile")
        .await
    {
        tracing::warn!(error = %e, reason, "cannot record event");
    }
}

/// The spec errors, including ones only the operator can see (unknown server, engine
/// mismatch with the server).
fn check(db: &Database, ctx: &Context) -> Vec<FieldError> {
    let mut errors = validate::validate(&db.spec).err().unwrap_or_default();
    match ctx.servers.get(db.spec.server_name()) {
        None => errors.push(FieldError::new(
            "spec.server",
            format!(
                "Invalid value: {:?}: no such server in the operator's configuration (servers: {})",
                db.spec.server_name(),
                ctx.servers.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )),
        Some((server, _)) if server.engine != db.spec.engine => errors.push(FieldError::new(
            "spec.engine",
            format!(
                "Invalid value: {:?}: server {:?} runs {}",
                db.spec.engine.as_str(),
                server.name,
                server.engine
            ),
        )),
        Some(_) => {}
    }
    errors
}

async fn apply(db: &Database, ctx: &Context) -> Result<Action, Failure> {
    // The cached copy can lag behind our own status writes (a Secret event queues the Database
    // again at once); deciding from it would flip conditions back and repeat one-time Events.
    let api: Api<Database> = Api::namespaced(ctx.client.clone(), &db.namespace().unwrap_or_default());
    // crwatch::api, not Api's methods: an answer that does not decode never reaches a log.
    let Some(fresh) = crwatch::api::get_opt(&api, &db.name_any())
        .await
        .map_err(|e| Failure::kube("reading the Database", e))?
    else {
        return Ok(Action::done());
    };
    if fresh.metadata.deletion_timestamp.is_some() {
        // Deletion started meanwhile: the next reconcile runs the cleanup.
        return Ok(Action::done());
    }
    let db = &fresh;
    let generation = db.metadata.generation;
    let before = db.status.clone().unwrap_or_default();
    let mut status = before.clone();
    status.observed_generation = generation;

    let errors = check(db, ctx);
    if !errors.is_empty() {
        let message = validate::describe(&errors);
        status.phase = Some(DatabasePhase::Failed);
        status.ready = false;
        status.message = Some(format!("Invalid spec: {message}"));
        let t = now();
        set_condition(
            &mut status.conditions,
            condition("Invalid", true, "InvalidSpec", &message, generation),
            t.clone(),
        );
        set_condition(
            &mut status.conditions,
            condition("Ready", false, "InvalidSpec", &message, generation),
            t,
        );
        if write_status(ctx, db, &status).await? {
            event(ctx, db, EventType::Warning, "InvalidSpec", &message).await;
        }
        // No retry: the spec has to change, and that is a new generation.
        return Ok(Action::done());
    }
    crwatch::conditions::remove(&mut status.conditions, "Invalid");

    let Some((server, engine)) = ctx.servers.get(db.spec.server_name()) else {
        return Ok(Action::done()); // `check` reported it
    };
    if before.phase.is_none() || before.phase == Some(DatabasePhase::Failed) {
        status.phase = Some(DatabasePhase::Provisioning);
        status.message = Some("Provisioning".into());
        let mut provisioning = status.clone();
        set_condition(
            &mut provisioning.conditions,
            condition(
                "Ready",
                false,
                "Provisioning",
                "creating the database and its users",
                generation,
            ),
            now(),
        );
        write_status(ctx, db, &provisioning).await?;
    }

    match provision(db, ctx, server, engine).await {
        Ok(p) => {
            let t = now();
            status.phase = Some(DatabasePhase::Ready);
            status.ready = true;
            status.message = Some("Database is ready".into());
            status.connection_string = Some(connection_string(server, &p.database));
            status.actual_size = Some(quantity::format_bytes(p.size));
            status.users = p.roles;
            let gen_ = generation;
            set_condition(
                &mut status.conditions,
                condition("Ready", true, "Provisioned", "Database is ready", gen_),
                t.clone(),
            );
            set_condition(
                &mut status.conditions,
                condition("Degraded", false, "Reachable", "the server answers", gen_),
                t.clone(),
            );
            let version_msg = if p.version_ok {
                format!("server runs {}", p.version)
            } else {
                format!(
                    "spec.version is {:?} but server {:?} runs {}",
                    db.spec.version, server.name, p.version
                )
            };
            let reason = if p.version_ok {
                "VersionMatches"
            } else {
                "VersionMismatch"
            };
            set_condition(
                &mut status.conditions,
                condition("VersionMatched", p.version_ok, reason, &version_msg, gen_),
                t.clone(),
            );
            let limit = quantity::parse_bytes(&db.spec.size).unwrap_or(u64::MAX);
            let exceeded = p.size > limit;
            let size_msg = format!("uses {} of {}", quantity::format_bytes(p.size), db.spec.size);
            let reason = if exceeded { "SizeExceeded" } else { "WithinSize" };
            set_condition(
                &mut status.conditions,
                condition("SizeExceeded", exceeded, reason, &size_msg, gen_),
                t,
            );
            let was_ready = before.ready;
            let was_mismatch = crwatch::conditions::is_false(&before.conditions, "VersionMatched");
            let was_exceeded = crwatch::conditions::is_true(&before.conditions, "SizeExceeded");
            write_status(ctx, db, &status).await?;
            if !was_ready {
                let msg = format!("database {} ready on server {:?}", p.database, server.name);
                event(ctx, db, EventType::Normal, "Provisioned", &msg).await;
            }
            if !p.version_ok && !was_mismatch {
                event(ctx, db, EventType::Warning, "VersionMismatch", &version_msg).await;
            }
            if exceeded && !was_exceeded {
                event(ctx, db, EventType::Warning, "SizeExceeded", &size_msg).await;
            }
            Ok(Action::requeue_after(RESYNC))
        }
        Err(f) => {
            let t = now();
            status.ready = false;
            if before.phase != Some(DatabasePhase::Ready) {
                status.phase = Some(DatabasePhase::Provisioning);
            }
            status.message = Some(f.message.clone());
            set_condition(
                &mut status.conditions,
                condition("Degraded", true, f.reason, &f.message, generation),
                t.clone(),
            );
            set_condition(
                &mut status.conditions,
                condition("Ready", false, f.reason, &f.message, generation),
                t,
            );
            // The status write can fail too (API server trouble); the original failure matters more.
            let _ = write_status(ctx, db, &status).await;
            event(ctx, db, EventType::Warning, f.reason, &f.message).await;
            Err(f)
        }
    }
}

fn connection_string(server: &Server, database: &str) -> String {
    let scheme = match server.engine {
        DatabaseEngine::PostgreSQL => "postgresql",
        DatabaseEngine::MySQL => "mysql",
    };
    format!("{scheme}://{}:{}/{database}", server.host, server.port)
}

struct Provisioned {
    database: String,
    roles: Vec<String>,
    version: String,
    version_ok: bool,
    size: u64,
}

fn secret_name(db: &Database) -> String {
    format!("{}-credentials", db.name_any())
}

fn text(data: Option<&BTreeMap<String, ByteString>>, key: &str) -> Option<String> {
    data?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.is_empty())
}

async fn provision(
    db: &Database,
    ctx: &Context,
    server: &Server,
    engine: &Engine,
) -> Result<Provisioned, Failure> {
    let ns = db.namespace().unwrap_or_default();
    let kind = db.spec.engine;
    let database = naming::database_name(kind, &ns, &db.name_any());
    let version = engine.server_version().await.map_err(Failure::engine)?;
    let version_ok = version_matches(&db.spec.version, &version);
    if engine.ensure_database(&database).await.map_err(Failure::engine)? {
        event(
            ctx,
            db,
            EventType::Normal,
            "DatabaseCreated",
            &format!("created database {database}"),
        )
        .await;
    }

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = secret_name(db);
    // Secrets go through crwatch::api: kube's own methods log an undecodable answer whole.
    let existing = crwatch::api::get_opt(&secrets, &name)
        .await
        .map_err(|e| Failure::kube("reading the credentials Secret", e))?;
    let uid = db.uid().unwrap_or_default();
    if let Some(s) = &existing {
        let ours = s.owner_references().iter().any(|r| r.uid == uid);
        if !ours {
            return Err(Failure {
                reason: "SecretConflict",
                message: format!(
                    "Secret {name} exists and is not owned by this Database; rename or delete it"
                ),
                transient: false,
            });
        }
    }
    let old_data = existing.as_ref().and_then(|s| s.data.as_ref());

    // Every password is settled (passwordSecrets read) before any is set on the server, so a
    // missing passwordSecret does not leave new server passwords behind on each retry. The
    // Secret is written only after the server has the passwords: a Secret that exists works.
    let mut data = BTreeMap::new();
    let mut logins = Vec::new();
    for user in &db.spec.users {
        let u = &user.username;
        let role = naming::role_name(kind, &database, u);
        let password = match user.password_secret() {
            Some(secret) => {
                let s = crwatch::api::get_opt(&secrets, secret)
                    .await
                    .map_err(|e| Failure::kube("reading a password Secret", e))?
                    .ok_or_else(|| Failure {
                        reason: "PasswordSecretMissing",
                        message: format!("spec.users[{u}].passwordSecret: Secret {secret} not found"),
                        transient: true,
                    })?;
                Password::new(text(s.data.as_ref(), "password").ok_or_else(|| Failure {
                    reason: "PasswordSecretMissing",
                    message: format!("Secret {secret} has no key \"password\""),
                    transient: true,
                })?)
            }
            // The credentials Secret is where generated passwords live; if it was deleted or
            // the key edited away, a new password is generated and set on the server.
            None => text(old_data, &format!("{u}.password"))
                .map(Password::new)
                .unwrap_or_else(Password::generate),
        };
        let uri = user_uri(server, &role, &password, &database);
        for (k, v) in [
            ("username", role.clone()),
            ("password", password.expose().to_string()),
            ("host", server.host.clone()),
            ("port", server.port.to_string()),
            ("database", database.clone()),
            ("uri", uri),
        ] {
            data.insert(format!("{u}.{k}"), ByteString(v.into_bytes()));
        }
        logins.push((role, password));
    }

    let mut roles = Vec::new();
    for (role, password) in logins {
        match engine
            .ensure_user(&role, &password, &database)
            .await
            .map_err(Failure::engine)?
        {
            UserChange::Created => {
                event(
                    ctx,
                    db,
                    EventType::Normal,
                    "UserCreated",
                    &format!("created user {role}"),
                )
                .await;
            }
            UserChange::PasswordChanged => {
                let msg = format!("set the password of {role}");
                event(ctx, db, EventType::Normal, "PasswordSynced", &msg).await;
            }
            UserChange::Unchanged => {}
        }
        roles.push(role);
    }
    write_secret(ctx, db, &secrets, existing, data).await?;

    // Users no longer in the spec: those the server knows for this database, and those the
    // status remembers (in case the server-side marker query misses one).
    let wanted: BTreeSet<&String> = roles.iter().collect();
    let mut present: BTreeSet<String> = engine
        .list_users(&database)
        .await
        .map_err(Failure::engine)?
        .into_iter()
        .collect();
    let suffix = naming::role_suffix(&database);
    present.extend(
        db.status
            .as_ref()
            .map(|s| s.users.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.ends_with(&suffix)),
    );
    for role in present.iter().filter(|r| !wanted.contains(r)) {
        if engine.drop_user(role, &database).await.map_err(Failure::engine)? {
            event(
                ctx,
                db,
                EventType::Normal,
                "UserRemoved",
                &format!("dropped user {role}"),
            )
            .await;
        }
    }

    let size = engine.database_size(&database).await.map_err(Failure::engine)?;
    Ok(Provisioned {
        database,
        roles,
        version,
        version_ok,
        size,
    })
}

fn user_uri(server: &Server, role: &str, password: &Password, database: &str) -> String {
    let scheme = match server.engine {
        DatabaseEngine::PostgreSQL => "postgresql",
        DatabaseEngine::MySQL => "mysql",
    };
    let base = format!("{scheme}://{}:{}/{database}", server.host, server.port);
    match url::Url::parse(&base) {
        Ok(mut url) => {
            // Url percent-encodes what needs it; setting credentials on a URL with a host
            // cannot fail.
            let _ = url.set_username(role);
            let _ = url.set_password(Some(password.expose()));
            url.to_string()
        }
        Err(_) => base,
    }
}

async fn write_secret(
    ctx: &Context,
    db: &Database,
    secrets: &Api<Secret>,
    existing: Option<Secret>,
    data: BTreeMap<String, ByteString>,
) -> Result<(), Failure> {
    let owner = db.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
    let labels = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
    match existing {
        Some(mut s) => {
            let labelled = s.labels().get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1);
            if s.data.as_ref() == Some(&data) && labelled {
                return Ok(());
            }
            s.data = Some(data);
            s.string_data = None;
            s.labels_mut().insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
            crwatch::api::replace(secrets, &secret_name(db), &PostParams::default(), &s)
                .await
                .map_err(|e| Failure::kube("updating the credentials Secret", e))?;
            event(
                ctx,
                db,
                EventType::Normal,
                "SecretUpdated",
                &format!("restored Secret {}", secret_name(db)),
            )
            .await;
        }
        None => {
            let s = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name(db)),
                    namespace: db.namespace(),
                    owner_references: Some(owner),
                    labels: Some(labels),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            crwatch::api::create(secrets, &PostParams::default(), &s)
                .await
                .map_err(|e| Failure::kube("creating the credentials Secret", e))?;
            event(
                ctx,
                db,
                EventType::Normal,
                "SecretCreated",
                &format!("wrote Secret {}", secret_name(db)),
            )
            .await;
        }
    }
    Ok(())
}

async fn cleanup(db: &Database, ctx: &Context) -> Result<Action, Failure> {
    let mut status = db.status.clone().unwrap_or_default();
    if status.phase != Some(DatabasePhase::Deleting) {
        status.phase = Some(DatabasePhase::Deleting);
        status.ready = false;
        status.message = Some(format!("Deleting (deletionPolicy {:?})", db.spec.deletion_policy));
        write_status(ctx, db, &status).await?;
    }
    let Some((server, engine)) = ctx.servers.get(db.spec.server_name()) else {
        let provisioned = !status.users.is_empty() || status.connection_string.is_some();
        if provisioned && db.spec.deletion_policy == DeletionPolicy::Delete {
            // It was provisioned on a server the configuration no longer has (a bad rollout?):
            // removing the finalizer would leak the database for good.
            let message = format!(
                "server {:?} is not in the operator's configuration; the database stays and so does \
                 the finalizer until it is",
                db.spec.server_name()
            );
            event(ctx, db, EventType::Warning, "DeletionBlocked", &message).await;
            return Err(Failure {
                reason: "ServerNotConfigured",
                message,
                transient: false,
            });
        }
        // Never provisioned (or Retain): nothing to clean up on a server the operator does not know.
        let msg = format!(
            "server {:?} is not configured: nothing to clean up",
            db.spec.server_name()
        );
        event(ctx, db, EventType::Warning, "CleanupSkipped", &msg).await;
        return Ok(Action::done());
    };
    if db.spec.deletion_policy == DeletionPolicy::Retain {
        let database =
            naming::database_name(server.engine, &db.namespace().unwrap_or_default(), &db.name_any());
        let msg = format!(
            "kept database {database} and its users on server {:?} (deletionPolicy Retain)",
            server.name
        );
        event(ctx, db, EventType::Normal, "Retained", &msg).await;
        return Ok(Action::done());
    }
    let database = naming::database_name(server.engine, &db.namespace().unwrap_or_default(), &db.name_any());
    let result = async {
        let mut roles: BTreeSet<String> = engine.list_users(&database).await?.into_iter().collect();
        let suffix = naming::role_suffix(&database);
        roles.extend(status.users.iter().filter(|r| r.ends_with(&suffix)).cloned());
        for role in &roles {
            engine.drop_user(role, &database).await?;
        }
        engine.drop_database(&database).await
    }
    .await;
    match result {
        Ok(_) => {
            let msg = format!(
                "dropped database {database} and its users on server {:?}",
                server.name
            );
            event(ctx, db, EventType::Normal, "Deleted", &msg).await;
            Ok(Action::done())
        }
        Err(e) => {
            let f = Failure::engine(e);
            let message = format!("deletion waits for the server: {}", f.message);
            let t = now();
            set_condition(
                &mut status.conditions,
                condition("Degraded", true, f.reason, &message, db.metadata.generation),
                t,
            );
            status.message = Some(message.clone());
            let _ = write_status(ctx, db, &status).await;
            event(ctx, db, EventType::Warning, "DeletionBlocked", &message).await;
            Err(f)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(engine: DatabaseEngine) -> Server {
        Server {
            name: "default".into(),
            engine,
            admin_dsn: "x".into(),
            host: "db.example".into(),
            port: 5432,
        }
    }

    #[test]
    fn uris_carry_encoded_credentials_and_connection_strings_none() {
        let s = server(DatabaseEngine::PostgreSQL);
        let uri = user_uri(&s, "app_1234", &Password::new("p@ss/word"), "ns_db_1");
        assert_eq!(uri, "postgresql://app_1234:p%40ss%2Fword@db.example:5432/ns_db_1");
        assert_eq!(
            connection_string(&s, "ns_db_1"),
            "postgresql://db.example:5432/ns_db_1"
        );
        let m = server(DatabaseEngine::MySQL);
        assert!(user_uri(&m, "a", &Password::new("b"), "c").starts_with("mysql://a:b@"));
    }
}

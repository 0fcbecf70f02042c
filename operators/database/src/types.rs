//! The `Database` custom resource (`stable.example.com/v1`): its spec, status and the enums
//! they use, with the JSON schema the CRD carries.
//!
//! The schema does what a structural schema can (types, enums, patterns, lengths, defaults,
//! list-map keys); the rules it cannot express (reserved user names, quantities that must be
//! positive, immutable fields) live in [`crate::validate`], for the admission webhook and for
//! the reconciler, which re-checks them before touching a database server.
//!
//! Enums implement `JsonSchema` by hand: derived, documented variants become a `oneOf` of
//! constants, where a CRD wants a plain `enum` (as `crwatch::conditions` does for the same
//! reason).

use std::fmt;

use crwatch::conditions::{Condition, conditions_schema};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The longest spec username: the shorter role-name limit (PostgreSQL's 63 bytes) minus the
/// `_` and 8-hex suffix [`crate::naming::role_name`] appends.
pub const MAX_USERNAME_LEN: usize = 54;

/// The server name used when `spec.server` is not set.
pub const DEFAULT_SERVER: &str = "default";

/// What the CRD accepts as `spec.size`: a plain number with an optional binary or decimal
/// suffix (`10Gi`, `1.5T`, `500M`). A subset of Kubernetes' quantity syntax (no signs,
/// exponents or milli-bytes), all of which [`crate::quantity::parse_bytes`] reads.
pub const SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// A major (`15`) or major.minor (`10.11`) version.
pub const VERSION_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?$";

/// A user name: lowercase letters, digits and `_`, not starting with a digit. The pattern
/// lets the empty string through so that an empty name gets one error (from `minLength`), not
/// two.
pub const USERNAME_PATTERN: &str = r"^([a-z_][a-z0-9_]*)?$";

/// A DNS-1123 subdomain (the names of Secrets), or empty for "not set".
pub const SECRET_NAME_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$";

/// A DNS-1123 label (the names of configured servers).
pub const SERVER_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A database on a PostgreSQL or MariaDB server, with users and their credentials.
///
/// ```
/// use database_operator::types::{Database, DatabaseEngine, DatabaseSpec, DeletionPolicy};
///
/// let spec: DatabaseSpec = serde_json::from_value(serde_json::json!({
///     "engine": "PostgreSQL", "version": "15", "size": "10Gi",
///     "users": [{"username": "admin"}, {"username": "appuser"}],
/// }))
/// .unwrap();
/// assert_eq!(spec.engine, DatabaseEngine::PostgreSQL);
/// assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
/// let db = Database::new("my-app-db", spec);
/// assert_eq!(db.spec.users[1].username, "appuser");
/// ```
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "stable.example.com",
    version = "v1",
    kind = "Database",
    plural = "databases",
    singular = "database",
    shortname = "db",
    namespaced,
    status = "DatabaseStatus",
    doc = "A database, with users and credentials, on a PostgreSQL or MariaDB server.",
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".spec.engine"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "The database wanted.")]
pub struct DatabaseSpec {
    /// Database engine; MySQL is served by MariaDB.
    pub engine: DatabaseEngine,
    /// Version wanted: a major version such as 15, or major.minor such as 10.11.
    #[schemars(length(max = 16), pattern(VERSION_PATTERN))]
    pub version: String,
    /// Storage size, a Kubernetes quantity such as 10Gi.
    #[schemars(length(max = 64), pattern(SIZE_PATTERN))]
    pub size: String,
    /// Users to create, each with access to this database only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "users_schema")]
    pub users: Vec<DatabaseUser>,
    /// What happens to the database on the server when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// A named server from the operator's configuration; unset means "default".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "server_schema")]
    pub server: Option<String>,
}

impl DatabaseSpec {
    /// The server this database lives on: `spec.server`, or [`DEFAULT_SERVER`] when unset or
    /// empty.
    ///
    /// ```
    /// # use database_operator::types::*;
    /// let mut spec = DatabaseSpec {
    ///     engine: DatabaseEngine::MySQL, version: "10.11".into(), size: "1Gi".into(),
    ///     users: vec![], deletion_policy: DeletionPolicy::Delete, server: None,
    /// };
    /// assert_eq!(spec.server_name(), "default");
    /// spec.server = Some("eu-1".into());
    /// assert_eq!(spec.server_name(), "eu-1");
    /// ```
    pub fn server_name(&self) -> &str {
        match self.server.as_deref() {
            None | Some("") => DEFAULT_SERVER,
            Some(name) => name,
        }
    }
}

/// One user of the database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseUser {
    /// User name: lowercase letters, digits and underscores, not starting with a digit, not a
    /// reserved name (postgres, root, mysql, pg_..., SQL keywords). The login name on the
    /// server is derived from it and stored in the credentials Secret.
    #[schemars(length(min = 1, max = 54), pattern(USERNAME_PATTERN))]
    pub username: String,
    /// Name of an existing Secret in this namespace holding the password; empty or unset to
    /// have the operator generate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), pattern(SECRET_NAME_PATTERN))]
    pub password_secret: Option<String>,
}

impl DatabaseUser {
    /// The password Secret's name, treating an empty string as unset.
    ///
    /// ```
    /// # use database_operator::types::DatabaseUser;
    /// let user = DatabaseUser { username: "admin".into(), password_secret: Some("".into()) };
    /// assert_eq!(user.password_secret(), None);
    /// ```
    pub fn password_secret(&self) -> Option<&str> {
        self.password_secret.as_deref().filter(|s| !s.is_empty())
    }
}

/// `users` is a list-map keyed by `username`: the API server rejects duplicate user names and
/// server-side apply merges users one by one.
fn users_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<DatabaseUser>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["username"]),
    );
    schema.insert(
        "description".into(),
        "Users to create, each with access to this database only.".into(),
    );
    schema
}

fn server_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A named server from the operator's configuration; unset means \"default\".",
        "type": "string",
        "maxLength": 63,
        "pattern": SERVER_NAME_PATTERN,
    })
}

use crwatch::string_enum_schema;

/// The database engine. `MySQL` databases are served by MariaDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatabaseEngine {
    /// PostgreSQL.
    PostgreSQL,
    /// MySQL, served by MariaDB.
    MySQL,
}

string_enum_schema!(
    DatabaseEngine,
    "Database engine; MySQL is served by MariaDB.",
    ["PostgreSQL", "MySQL"]
);

impl DatabaseEngine {
    /// The wire spelling (`PostgreSQL`, `MySQL`).
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseEngine::PostgreSQL => "PostgreSQL",
            DatabaseEngine::MySQL => "MySQL",
        }
    }
}

impl fmt::Display for DatabaseEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to the database on the server when the `Database` object is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeletionPolicy {
    /// Keep the database and its data (the default); users and the Secret go.
    #[default]
    Retain,
    /// Drop the database, its data and its users.
    Delete,
}

string_enum_schema!(
    DeletionPolicy,
    "What happens to the database on the server when this object is deleted: Retain keeps it \
     and its users, Delete drops both.",
    ["Retain", "Delete"],
    default = "Retain"
);

/// Where the database is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DatabasePhase {
    /// Accepted, not yet worked on.
    Pending,
    /// Being created or updated on the server.
    Provisioning,
    /// Exists with its users; credentials are in the Secret.
    Ready,
    /// Cannot be provisioned until something changes; see the message and conditions.
    Failed,
    /// Being deleted.
    Deleting,
}

string_enum_schema!(
    DatabasePhase,
    "Where the database is in its life.",
    ["Pending", "Provisioning", "Ready", "Failed", "Deleting"]
);

impl DatabasePhase {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DatabasePhase::Pending => "Pending",
            DatabasePhase::Provisioning => "Provisioning",
            DatabasePhase::Ready => "Ready",
            DatabasePhase::Failed => "Failed",
            DatabasePhase::Deleting => "Deleting",
        }
    }
}

impl fmt::Display for DatabasePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "What the operator observed.")]
pub struct DatabaseStatus {
    /// Where the database is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DatabasePhase>,
    /// Whether the database and all its users exist as specified.
    #[serde(default)]
    pub ready: bool,
    /// How to reach the database, without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_string: Option<String>,
    /// Space the database uses on the server, as a quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<String>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// Current conditions (Ready, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Details for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Login names the operator created on the server for this database, so that users
    /// removed from the spec are dropped even after the operator restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "provisioned_users_schema")]
    pub users: Vec<String>,
}

fn provisioned_users_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<String>>();
    schema.insert("x-kubernetes-list-type".into(), "set".into());
    schema.insert(
        "description".into(),
        "Login names the operator created on the server for this database.".into(),
    );
    schema
}

//! The rules a `Database` spec must follow beyond what the CRD schema enforces, with errors
//! that name the field (`spec.users[1].username`), for the admission webhook and the
//! reconciler alike.
//!
//! # User names
//!
//! `^[a-z_][a-z0-9_]*$`, at most [`MAX_USERNAME_LEN`] (54) characters, not reserved:
//!
//! * **Lowercase only.** PostgreSQL folds unquoted identifiers to lower case, so a role
//!   `AppUser` would have to be written `"AppUser"` (quoted) in every `GRANT`, `psql -U` and
//!   connection string forever, and `appuser` would be a different role; MariaDB user names are
//!   case-sensitive and never folded. Lowercase names mean the same thing, quoted or not, on
//!   both engines.
//! * **54 characters**: the login name is `<username>_<8 hex>` (see [`crate::naming`]), and
//!   must fit PostgreSQL's 63-byte limit, the smaller of the two engines'.
//! * **Reserved**: the servers' own accounts (`postgres`, `root`, `mysql`, `mariadb.sys`),
//!   PostgreSQL's `pg_` prefix (reserved for system roles), role specifications that mean
//!   something else in `GRANT` (`public`, `none`, `current_user`, `session_user`,
//!   `current_role`, `user`) and the reserved words of SQL, PostgreSQL and MariaDB. The login
//!   name carries a suffix, so none of these would actually clash on the server; they are
//!   refused so that a spec reads unambiguously and the suffix can be dropped later without
//!   breaking anyone.
//!
//! # Other fields
//!
//! `size` must be a positive Kubernetes quantity, `version` a number like `15` or `10.11`,
//! `passwordSecret` a Secret name (DNS-1123 subdomain) or empty, `server` a DNS-1123 label.
//! [`validate_update`] also refuses changing `engine` or `server`: a database cannot move
//! between engines or servers, and accepting the change would leave the old one orphaned and
//! create an empty one elsewhere.

use std::collections::HashMap;
use std::fmt;

use crate::quantity::parse_bytes;
use crate::types::{DatabaseSpec, MAX_USERNAME_LEN};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, as `kubectl explain` and the API server write it:
    /// `spec.users[1].username`.
    pub field: String,
    /// What is wrong, for humans.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All errors, one per line (`spec.size: ...`), for an admission response or a status message.
///
/// ```
/// use database_operator::validate::{FieldError, describe};
/// let errors = vec![FieldError::new("spec.size", "must be positive")];
/// assert_eq!(describe(&errors), "spec.size: must be positive");
/// ```
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Check `spec`; every problem found is reported, not just the first.
///
/// ```
/// use database_operator::types::DatabaseSpec;
/// use database_operator::validate::validate;
///
/// let spec: DatabaseSpec = serde_json::from_value(serde_json::json!({
///     "engine": "PostgreSQL", "version": "15", "size": "10Gi",
///     "users": [{"username": "admin", "passwordSecret": ""}, {"username": "postgres"}],
/// }))
/// .unwrap();
/// let errors = validate(&spec).unwrap_err();
/// assert_eq!(errors.len(), 1);
/// assert_eq!(errors[0].field, "spec.users[1].username");
/// ```
pub fn validate(spec: &DatabaseSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if let Err(message) = check_version(&spec.version) {
        errors.push(FieldError::new("spec.version", message));
    }
    match parse_bytes(&spec.size) {
        Ok(0) => errors.push(FieldError::new("spec.size", "must be positive")),
        Ok(_) => {}
        Err(e) => errors.push(FieldError::new("spec.size", format!("{:?}: {e}", spec.size))),
    }
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (i, user) in spec.users.iter().enumerate() {
        let field = format!("spec.users[{i}].username");
        if let Err(message) = check_username(&user.username) {
            errors.push(FieldError::new(&field, message));
        }
        if let Some(first) = first_seen.insert(&user.username, i) {
            first_seen.insert(&user.username, first);
            errors.push(FieldError::new(
                &field,
                format!(
                    "duplicate username {:?} (also spec.users[{first}])",
                    user.username
                ),
            ));
        }
        if let Some(secret) = user.password_secret()
            && let Err(message) = check_dns_subdomain(secret)
        {
            errors.push(FieldError::new(
                format!("spec.users[{i}].passwordSecret"),
                message,
            ));
        }
    }
    if let Some(server) = spec.server.as_deref().filter(|s| !s.is_empty())
        && let Err(message) = check_dns_label(server)
    {
        errors.push(FieldError::new("spec.server", message));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Check a change from `old` to `new`: everything [`validate`] checks on `new`, and that
/// `engine` and the server (an unset `server` meaning `default`) stay as they were.
///
/// ```
/// use database_operator::types::{DatabaseEngine, DatabaseSpec};
/// use database_operator::validate::validate_update;
///
/// let old: DatabaseSpec = serde_json::from_value(serde_json::json!({
///     "engine": "PostgreSQL", "version": "15", "size": "10Gi"})).unwrap();
/// let mut new = old.clone();
/// new.size = "20Gi".into();
/// new.server = Some("default".into());
/// assert!(validate_update(&old, &new).is_ok());
/// new.engine = DatabaseEngine::MySQL;
/// new.version = "10.11".into();
/// assert_eq!(validate_update(&old, &new).unwrap_err()[0].field, "spec.engine");
/// ```
pub fn validate_update(old: &DatabaseSpec, new: &DatabaseSpec) -> Result<(), Vec<FieldError>> {
    let mut errors = validate(new).err().unwrap_or_default();
    if old.engine != new.engine {
        errors.push(FieldError::new(
            "spec.engine",
            format!("is immutable (was {}, now {})", old.engine, new.engine),
        ));
    }
    if old.server_name() != new.server_name() {
        errors.push(FieldError::new(
            "spec.server",
            format!(
                "is immutable (was {:?}, now {:?})",
                old.server_name(),
                new.server_name()
            ),
        ));
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// Whether `username` is acceptable as a spec user name; `Err` says why not.
///
/// ```
/// use database_operator::validate::check_username;
/// assert!(check_username("app_user2").is_ok());
/// assert!(check_username("AppUser").is_err());
/// assert!(check_username("pg_monitor").is_err());
/// assert!(check_username("select").is_err());
/// ```
pub fn check_username(username: &str) -> Result<(), String> {
    if username.is_empty() {
        return Err("must not be empty".into());
    }
    if username.len() > MAX_USERNAME_LEN {
        return Err(format!(
            "must be at most {MAX_USERNAME_LEN} characters (the login name adds 9 and must fit \
             PostgreSQL's 63)"
        ));
    }
    let valid_chars = username
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let valid_start = username.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
    if !valid_chars || !valid_start {
        return Err(format!(
            "{username:?} is not a valid user name: use lowercase letters, digits and _, not \
             starting with a digit (^[a-z_][a-z0-9_]*$)"
        ));
    }
    if username.starts_with("pg_") {
        return Err(format!(
            "{username:?} is reserved: the pg_ prefix is PostgreSQL's"
        ));
    }
    if RESERVED_USERNAMES.contains(&username) {
        return Err(format!("{username:?} is reserved"));
    }
    Ok(())
}

/// Names refused as user names (see the module docs); all lowercase. Besides these, anything
/// starting with `pg_` is refused.
pub const RESERVED_USERNAMES: &[&str] = &[
    // The servers' own accounts and role specifications.
    "postgres",
    "root",
    "mysql",
    "mariadb",
    "public",
    "none",
    "current_user",
    "session_user",
    "current_role",
    "user",
    "system_user",
    // Reserved words of standard SQL, PostgreSQL and MariaDB.
    "accessible",
    "add",
    "all",
    "alter",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asensitive",
    "asymmetric",
    "authorization",
    "before",
    "between",
    "bigint",
    "binary",
    "blob",
    "both",
    "by",
    "call",
    "cascade",
    "case",
    "cast",
    "change",
    "char",
    "character",
    "check",
    "collate",
    "column",
    "concurrently",
    "condition",
    "constraint",
    "continue",
    "convert",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_schema",
    "current_time",
    "current_timestamp",
    "cursor",
    "database",
    "databases",
    "day_hour",
    "day_microsecond",
    "day_minute",
    "day_second",
    "dec",
    "decimal",
    "declare",
    "default",
    "deferrable",
    "delayed",
    "delete",
    "desc",
    "describe",
    "deterministic",
    "distinct",
    "distinctrow",
    "div",
    "do",
    "double",
    "drop",
    "dual",
    "each",
    "else",
    "elseif",
    "enclosed",
    "end",
    "escaped",
    "except",
    "exists",
    "exit",
    "explain",
    "false",
    "fetch",
    "float",
    "for",
    "force",
    "foreign",
    "freeze",
    "from",
    "full",
    "fulltext",
    "grant",
    "group",
    "having",
    "high_priority",
    "hour_microsecond",
    "hour_minute",
    "hour_second",
    "if",
    "ignore",
    "ilike",
    "in",
    "index",
    "infile",
    "initially",
    "inner",
    "inout",
    "insensitive",
    "insert",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "iterate",
    "join",
    "key",
    "keys",
    "kill",
    "lateral",
    "leading",
    "leave",
    "left",
    "like",
    "limit",
    "linear",
    "lines",
    "load",
    "localtime",
    "localtimestamp",
    "lock",
    "long",
    "loop",
    "low_priority",
    "match",
    "mod",
    "modifies",
    "natural",
    "not",
    "notnull",
    "null",
    "numeric",
    "offset",
    "on",
    "only",
    "optimize",
    "option",
    "optionally",
    "or",
    "order",
    "out",
    "outer",
    "outfile",
    "over",
    "overlaps",
    "partition",
    "placing",
    "precision",
    "primary",
    "procedure",
    "purge",
    "range",
    "read",
    "reads",
    "real",
    "recursive",
    "references",
    "regexp",
    "release",
    "rename",
    "repeat",
    "replace",
    "require",
    "resignal",
    "restrict",
    "return",
    "returning",
    "revoke",
    "right",
    "rlike",
    "rows",
    "schema",
    "schemas",
    "select",
    "sensitive",
    "separator",
    "set",
    "show",
    "signal",
    "similar",
    "smallint",
    "some",
    "spatial",
    "specific",
    "sql",
    "sqlexception",
    "sqlstate",
    "sqlwarning",
    "ssl",
    "starting",
    "straight_join",
    "symmetric",
    "table",
    "tablesample",
    "terminated",
    "then",
    "to",
    "trailing",
    "trigger",
    "true",
    "undo",
    "union",
    "unique",
    "unlock",
    "unsigned",
    "update",
    "usage",
    "use",
    "using",
    "values",
    "varchar",
    "variadic",
    "varying",
    "verbose",
    "when",
    "where",
    "while",
    "window",
    "with",
    "write",
    "xor",
    "year_month",
    "zerofill",
];

fn check_version(version: &str) -> Result<(), String> {
    let mut parts = version.split('.');
    let numeric = |p: &str| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit());
    let ok = match (parts.next(), parts.next(), parts.next()) {
        (Some(major), None, None) => numeric(major),
        (Some(major), Some(minor), None) => numeric(major) && numeric(minor),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{version:?} is not a version: use a major version like 15 or major.minor like 10.11"
        ))
    }
}

fn check_dns_label(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ))
    }
}

fn check_dns_subdomain(name: &str) -> Result<(), String> {
    let ok = name.len() <= 253 && name.split('.').all(|label| check_dns_label(label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid Secret name: at most 253 characters, dot-separated parts of \
             lowercase letters, digits and '-', each starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{DatabaseEngine, DatabaseUser, DeletionPolicy};
    use proptest::prelude::*;

    fn spec() -> DatabaseSpec {
        DatabaseSpec {
            engine: DatabaseEngine::PostgreSQL,
            version: "15".into(),
            size: "10Gi".into(),
            users: vec![user("admin", Some("")), user("appuser", None)],
            deletion_policy: DeletionPolicy::Retain,
            server: Some("default".into()),
        }
    }

    fn user(name: &str, secret: Option<&str>) -> DatabaseUser {
        DatabaseUser {
            username: name.into(),
            password_secret: secret.map(Into::into),
        }
    }

    fn fields(result: Result<(), Vec<FieldError>>) -> Vec<String> {
        result
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn the_design_example_is_valid() {
        assert_eq!(validate(&spec()), Ok(()));
        let mut mysql = spec();
        mysql.engine = DatabaseEngine::MySQL;
        mysql.version = "10.11".into();
        mysql.server = None;
        assert_eq!(validate(&mysql), Ok(()));
    }

    #[test]
    fn usernames() {
        for ok in ["admin", "appuser", "_x", "a1", "app_user_2", &"u".repeat(54)] {
            assert_eq!(check_username(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "AppUser",
            "1user",
            "app-user",
            "app.user",
            "app user",
            "x'y",
            "x\"y",
            "x`y",
            "x;y",
            "ü",
            "postgres",
            "root",
            "mysql",
            "public",
            "none",
            "user",
            "current_user",
            "session_user",
            "pg_monitor",
            "pg_",
            "select",
            "table",
            "grant",
            &"u".repeat(55),
        ] {
            assert!(check_username(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn the_reserved_list_is_lowercase_and_sorted_after_the_accounts() {
        for word in RESERVED_USERNAMES {
            assert_eq!(word.to_lowercase(), *word);
        }
        let words = &RESERVED_USERNAMES[11..];
        let mut sorted = words.to_vec();
        sorted.sort();
        assert_eq!(words, sorted.as_slice(), "keep the keyword list sorted");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut s = spec();
        s.version = "fifteen".into();
        s.size = "10 GB".into();
        s.users = vec![
            user("admin", None),
            user("Admin", None),
            user("admin", Some("Not_A_Secret")),
            user("ok", Some("my-secret.v1")),
        ];
        s.server = Some("Main Server".into());
        assert_eq!(
            fields(validate(&s)),
            [
                "spec.version",
                "spec.size",
                "spec.users[1].username",
                "spec.users[2].username",
                "spec.users[2].passwordSecret",
                "spec.server",
            ]
        );
        let errors = validate(&s).unwrap_err();
        assert!(errors[3].message.contains("also spec.users[0]"), "{}", errors[3]);
    }

    #[test]
    fn sizes_and_versions() {
        for (size, ok) in [
            ("1", true),
            ("10Gi", true),
            ("0.5Gi", true),
            ("0", false),
            ("0Gi", false),
        ] {
            let mut s = spec();
            s.size = size.into();
            assert_eq!(validate(&s).is_ok(), ok, "{size}");
        }
        for (version, ok) in [
            ("15", true),
            ("10.11", true),
            ("10.11.6", false),
            ("v15", false),
            ("", false),
        ] {
            let mut s = spec();
            s.version = version.into();
            assert_eq!(validate(&s).is_ok(), ok, "{version}");
        }
    }

    #[test]
    fn engine_and_server_are_immutable() {
        let old = spec();
        let mut new = old.clone();
        new.server = None; // unset means "default": no change
        new.users.pop();
        new.deletion_policy = DeletionPolicy::Delete;
        assert_eq!(validate_update(&old, &new), Ok(()));
        new.engine = DatabaseEngine::MySQL;
        new.server = Some("other".into());
        new.size = "0".into();
        assert_eq!(
            fields(validate_update(&old, &new)),
            ["spec.size", "spec.engine", "spec.server"]
        );
    }

    proptest! {
        #[test]
        fn accepted_usernames_match_the_crd_pattern(name in "\\PC{0,60}") {
            let pattern = regex::Regex::new(crate::types::USERNAME_PATTERN).unwrap();
            if check_username(&name).is_ok() {
                prop_assert!(pattern.is_match(&name) && !name.is_empty() && name.len() <= MAX_USERNAME_LEN);
            }
        }

        #[test]
        fn secret_names_agree_with_the_crd_pattern(name in "[a-z0-9.-]{1,20}") {
            let pattern = regex::Regex::new(crate::types::SECRET_NAME_PATTERN).unwrap();
            prop_assert_eq!(check_dns_subdomain(&name).is_ok(), pattern.is_match(&name));
        }
    }
}

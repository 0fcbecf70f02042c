//! The names a `Database` gets on a server: the database's name from the object's namespace
//! and name, and each user's login (role) name from the database name and the spec username.
//!
//! # Database names
//!
//! `<namespace>_<name>_<hash>`, lowercase, with every character other than `a-z`, `0-9` and
//! `_` turned into `_`, where `<hash>` is the first 8 hex digits of SHA-256 of
//! `<namespace>/<name>`:
//!
//! ```text
//! default/my-app-db  ->  default_my_app_db_f6476640   (`echo -n default/my-app-db | sha256sum`)
//! appuser            ->  appuser_fe56c46b            (`echo -n default_my_app_db_f6476640 | sha256sum`)
//! ```
//!
//! The hash is **always** there. Mapping `-` and `.` to `_` (neither engine takes them in an
//! unquoted name) loses information: `a-b/c` and `a/b-c` both read `a_b_c`, as do `x/a.b`
//! and `x/a-b`. Appending the hash only "when needed" would need a rule for "needed" that is
//! itself injective, and a name that changes form when someone renames a sibling object is
//! worse than a constant suffix. With the hash, two objects share a database name only if their
//! readable parts agree *and* 32 bits of SHA-256 collide, and the readable part keeps the name
//! recognisable for DBAs. Kubernetes names cannot contain `/`, so `<namespace>/<name>` is
//! unambiguous. The name does not depend on the object's UID, so a `Database` recreated with
//! the same name finds the database a `Retain` deletion left behind.
//!
//! Names are cut to the engine's limit (PostgreSQL: 63 bytes, longer names are silently
//! truncated by the server; MariaDB: 64 characters) by shortening the readable part; the
//! hash, computed from the full `namespace/name`, keeps truncated names distinct. A name that
//! would start with a digit gets a leading `_`, so it is a valid unquoted identifier on both
//! engines (the SQL layer quotes every identifier anyway).
//!
//! # Role (login) names
//!
//! Roles are global on both servers, so the spec's `appuser` cannot be the login name: two
//! `Database`s with an `appuser` each would share one role. The login name is
//! `<username>_<dbhash>`, where `<dbhash>` is the first 8 hex digits of SHA-256 of the
//! database name; every role of one database ends in the same [`role_suffix`], which
//! [`crate::engine::Engine::list_users`] uses to find them again. Validated usernames
//! (`^[a-z_][a-z0-9_]*$`, at most [`MAX_USERNAME_LEN`] = 54 characters) map unchanged, so the
//! name is injective per database. Anything else (upper case, other characters, too long:
//! only reachable by bypassing validation) is sanitised, cut and followed by a hash of the
//! original username as well, so it cannot collide with a valid one by accident.

use sha2::{Digest, Sha256};

use crate::types::DatabaseEngine;
pub use crate::types::MAX_USERNAME_LEN;

/// PostgreSQL's identifier limit in bytes (`NAMEDATALEN - 1`); longer names are truncated.
pub const POSTGRES_MAX_IDENTIFIER: usize = 63;

/// MariaDB's database-name limit in characters.
pub const MARIADB_MAX_DATABASE: usize = 64;

/// MariaDB's user-name limit in characters that this operator assumes: 80 (MariaDB 10.0 to
/// 10.5). MariaDB 10.6 and later allow 128 (verified on 10.11, which rejects 129); MySQL 5.7 and
/// 8 allow only 32, which is one reason `MySQL` databases are served by MariaDB.
pub const MARIADB_MAX_USER: usize = 80;

/// Hex digits of the hashes appended to names.
pub const HASH_LEN: usize = 8;

/// The longest database name `engine` accepts.
///
/// ```
/// use database_operator::naming::max_database_name_len;
/// use database_operator::types::DatabaseEngine;
/// assert_eq!(max_database_name_len(DatabaseEngine::PostgreSQL), 63);
/// assert_eq!(max_database_name_len(DatabaseEngine::MySQL), 64);
/// ```
pub fn max_database_name_len(engine: DatabaseEngine) -> usize {
    match engine {
        DatabaseEngine::PostgreSQL => POSTGRES_MAX_IDENTIFIER,
        DatabaseEngine::MySQL => MARIADB_MAX_DATABASE,
    }
}

/// The longest role (user) name `engine` accepts.
///
/// ```
/// use database_operator::naming::max_role_name_len;
/// use database_operator::types::DatabaseEngine;
/// assert_eq!(max_role_name_len(DatabaseEngine::PostgreSQL), 63);
/// assert_eq!(max_role_name_len(DatabaseEngine::MySQL), 80);
/// ```
pub fn max_role_name_len(engine: DatabaseEngine) -> usize {
    match engine {
        DatabaseEngine::PostgreSQL => POSTGRES_MAX_IDENTIFIER,
        DatabaseEngine::MySQL => MARIADB_MAX_USER,
    }
}

/// The server-side database name of the `Database` `namespace/name` (see the module docs).
///
/// ```
/// use database_operator::naming::database_name;
/// use database_operator::types::DatabaseEngine::PostgreSQL;
/// let name = database_name(PostgreSQL, "default", "my-app-db");
/// assert_eq!(name, "default_my_app_db_f6476640");
/// assert_ne!(database_name(PostgreSQL, "a-b", "c"), database_name(PostgreSQL, "a", "b-c"));
/// ```
pub fn database_name(engine: DatabaseEngine, namespace: &str, name: &str) -> String {
    let hash = short_hash(format!("{namespace}/{name}").as_bytes());
    let readable = identifier_start(format!("{}_{}", sanitize(namespace), sanitize(name)));
    with_suffix(&readable, &hash, max_database_name_len(engine))
}

/// The suffix (`_` and 8 hex digits) every role of `database` ends with.
///
/// ```
/// use database_operator::naming::{role_name, role_suffix};
/// use database_operator::types::DatabaseEngine::MySQL;
/// let suffix = role_suffix("default_my_app_db_f6476640");
/// assert_eq!(suffix.len(), 9);
/// assert!(role_name(MySQL, "default_my_app_db_f6476640", "appuser").ends_with(&suffix));
/// ```
pub fn role_suffix(database: &str) -> String {
    format!("_{}", short_hash(database.as_bytes()))
}

/// The login (role) name on the server of the spec user `username` of `database` (see the
/// module docs).
///
/// ```
/// use database_operator::naming::role_name;
/// use database_operator::types::DatabaseEngine::PostgreSQL;
/// let role = role_name(PostgreSQL, "default_my_app_db_f6476640", "appuser");
/// assert_eq!(role, "appuser_fe56c46b");
/// assert_ne!(role, role_name(PostgreSQL, "other_db_12345678", "appuser"));
/// ```
pub fn role_name(engine: DatabaseEngine, database: &str, username: &str) -> String {
    let suffix = role_suffix(database);
    let limit = max_role_name_len(engine);
    let clean = identifier_start(sanitize(username));
    if clean == username && username.len() + suffix.len() <= limit {
        return format!("{username}{suffix}");
    }
    // Lossy: keep what fits of the readable part, then the username's own hash.
    let user_hash = short_hash(username.as_bytes());
    let keep = limit - suffix.len() - 1 - HASH_LEN;
    format!("{}_{user_hash}{suffix}", &clean[..clean.len().min(keep)])
}

/// `readable` cut so that `readable_hash` fits in `limit` bytes, then `_` and `hash`.
fn with_suffix(readable: &str, hash: &str, limit: usize) -> String {
    let keep = limit - 1 - hash.len();
    // `readable` is ASCII (see `sanitize`), so any byte index is a character boundary.
    format!("{}_{hash}", &readable[..readable.len().min(keep)])
}

/// Lowercase ASCII letters, digits and `_` kept (upper case folded), everything else `_`.
/// Always ASCII.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

/// `name` with a leading `_` if it would otherwise start with a digit or be empty.
fn identifier_start(mut name: String) -> String {
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert(0, '_');
    }
    name
}

/// The first [`HASH_LEN`] hex digits of SHA-256 of `bytes`.
fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..HASH_LEN / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DatabaseEngine::{MySQL, PostgreSQL};
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn is_plain_identifier(s: &str) -> bool {
        s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }

    #[test]
    fn the_documented_example_holds() {
        // echo -n default/my-app-db | sha256sum
        let digest = hex::encode(Sha256::digest(b"default/my-app-db"));
        let name = database_name(PostgreSQL, "default", "my-app-db");
        assert_eq!(name, format!("default_my_app_db_{}", &digest[..8]));
        assert_eq!(
            database_name(MySQL, "default", "my-app-db"),
            name,
            "short names agree"
        );
    }

    #[test]
    fn separator_ambiguities_do_not_collide() {
        let pairs = [
            (("a-b", "c"), ("a", "b-c")),
            (("a", "b.c"), ("a", "b-c")),
            (("a_b", "c"), ("a", "b_c")),
            (("x", "a--b"), ("x-a", "-b")),
        ];
        for (engine, ((ns1, n1), (ns2, n2))) in [PostgreSQL, MySQL]
            .into_iter()
            .flat_map(|e| pairs.map(|p| (e, p)))
        {
            let (a, b) = (database_name(engine, ns1, n1), database_name(engine, ns2, n2));
            assert_ne!(a, b, "{ns1}/{n1} vs {ns2}/{n2}");
        }
    }

    #[test]
    fn long_names_are_cut_to_the_engine_limit_and_stay_distinct() {
        let ns = "n".repeat(63);
        let long_a = format!("{}-a", "x".repeat(250));
        let long_b = format!("{}-b", "x".repeat(250));
        for engine in [PostgreSQL, MySQL] {
            let a = database_name(engine, &ns, &long_a);
            let b = database_name(engine, &ns, &long_b);
            assert_eq!(a.len(), max_database_name_len(engine));
            assert_eq!(b.len(), max_database_name_len(engine));
            assert_ne!(a, b, "truncation keeps the hash of the full name");
            assert_eq!(
                a[..a.len() - 9],
                b[..b.len() - 9],
                "the readable parts are the same"
            );
        }
    }

    #[test]
    fn names_starting_with_a_digit_become_identifiers() {
        let name = database_name(PostgreSQL, "1team", "2db");
        assert!(name.starts_with("_1team_2db_"), "{name}");
        assert!(database_name(PostgreSQL, "team", "2db").starts_with("team_2db_"));
        assert!(is_plain_identifier(&name));
    }

    #[test]
    fn valid_usernames_map_to_username_and_database_hash() {
        let db = database_name(PostgreSQL, "default", "my-app-db");
        let role = role_name(PostgreSQL, &db, "appuser");
        assert_eq!(role, format!("appuser{}", role_suffix(&db)));
        let longest = "u".repeat(MAX_USERNAME_LEN);
        assert_eq!(
            role_name(PostgreSQL, &db, &longest).len(),
            POSTGRES_MAX_IDENTIFIER
        );
        assert_eq!(
            role_name(MySQL, &db, &longest),
            format!("{longest}{}", role_suffix(&db))
        );
    }

    #[test]
    fn hostile_usernames_still_give_safe_distinct_names() {
        let db = "default_x_12345678";
        let hostile = [
            "Robert'); DROP TABLE students;--",
            "x\"; DROP DATABASE postgres; --",
            "x`; DROP DATABASE mysql; --",
            "appUser",
            "AppUser",
            "appuser ",
            "ünïcödé-名前",
            "\0nul",
            "",
            "1digit",
        ];
        let long = "a".repeat(200);
        let mut seen = HashSet::new();
        for engine in [PostgreSQL, MySQL] {
            seen.clear();
            seen.insert(role_name(engine, db, "appuser"));
            for u in hostile.iter().copied().chain([long.as_str()]) {
                let role = role_name(engine, db, u);
                assert!(role.len() <= max_role_name_len(engine), "{u:?} -> {role}");
                assert!(is_plain_identifier(&role), "{u:?} -> {role}");
                assert!(role.ends_with(&role_suffix(db)));
                assert!(seen.insert(role.clone()), "{u:?} collides: {role}");
            }
        }
    }

    proptest! {
        #[test]
        fn database_names_fit_and_are_identifiers(ns in "[a-z0-9-]{1,63}", name in "[a-z0-9.-]{1,253}") {
            for engine in [PostgreSQL, MySQL] {
                let db = database_name(engine, &ns, &name);
                prop_assert!(db.len() <= max_database_name_len(engine));
                prop_assert!(is_plain_identifier(&db), "{}", db);
            }
        }

        #[test]
        fn distinct_objects_get_distinct_names(
            a in ("[a-z0-9-]{1,8}", "[a-z0-9.-]{1,8}"),
            b in ("[a-z0-9-]{1,8}", "[a-z0-9.-]{1,8}"),
        ) {
            prop_assume!(a != b);
            prop_assert_ne!(database_name(PostgreSQL, &a.0, &a.1), database_name(PostgreSQL, &b.0, &b.1));
        }

        #[test]
        fn role_names_fit_any_input(db in ".{0,80}", user in ".{0,300}") {
            for engine in [PostgreSQL, MySQL] {
                let role = role_name(engine, &db, &user);
                prop_assert!(role.len() <= max_role_name_len(engine));
                prop_assert!(is_plain_identifier(&role));
            }
        }
    }
}

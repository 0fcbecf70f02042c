//! Passwords: generating strong ones, keeping them out of logs and error messages, and the
//! hashed forms the servers store, which are what the engines send instead of the password.
//!
//! Sending a hash instead of the password (as `psql`'s `\password` does) means the clear
//! password never appears in a statement, so not in the server's statement log, in
//! `pg_stat_activity`, in a syntax-error message or in the operator's own statement logging.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Length of generated passwords.
pub const GENERATED_LEN: usize = 32;

/// PBKDF2 iterations for PostgreSQL SCRAM-SHA-256 verifiers (PostgreSQL's default,
/// `scram_iterations`).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// A password. `Debug` shows `Password(***)`; there is no `Display`, so it cannot end up in a
/// formatted message by accident. [`expose`](Self::expose) gives the text where it is really
/// needed (the credentials Secret, a login).
///
/// ```
/// use database_operator::password::Password;
/// let p = Password::generate();
/// assert_eq!(p.expose().len(), 32);
/// assert!(p.expose().chars().all(|c| c.is_ascii_alphanumeric()));
/// assert_eq!(format!("{p:?}"), "Password(***)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// A password given by a user (from a Secret).
    pub fn new(text: impl Into<String>) -> Self {
        Password(text.into())
    }

    /// A new random password: [`GENERATED_LEN`] characters from `A-Z a-z 0-9` (about 190 bits),
    /// so it needs no quoting in URIs, shells or SQL.
    pub fn generate() -> Self {
        let rng = rand::rng();
        Password(
            rng.sample_iter(rand::distr::Alphanumeric)
                .take(GENERATED_LEN)
                .map(char::from)
                .collect(),
        )
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A PostgreSQL SCRAM-SHA-256 verifier for `password` with a random salt, in the form
/// PostgreSQL stores in `pg_authid.rolpassword` and accepts in `CREATE ROLE ... PASSWORD`:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802, RFC 7677).
///
/// The password is normalised with SASLprep first, falling back to the raw bytes when SASLprep
/// refuses it, exactly as PostgreSQL and libpq do, so clients log in with the same text.
///
/// ```
/// use database_operator::password::{Password, postgres_scram_verifier, scram_verifier_matches};
/// let p = Password::new("correct horse");
/// let v = postgres_scram_verifier(&p);
/// assert!(v.starts_with("SCRAM-SHA-256$4096:"));
/// assert!(scram_verifier_matches(&v, &p));
/// assert!(!scram_verifier_matches(&v, &Password::new("wrong")));
/// ```
pub fn postgres_scram_verifier(password: &Password) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    scram_verifier_with(password, &salt, SCRAM_ITERATIONS)
}

/// Whether `verifier` (as read from `pg_authid.rolpassword`) was made from `password`. `false`
/// for anything that is not a SCRAM-SHA-256 verifier (an MD5 hash, a NULL password).
pub fn scram_verifier_matches(verifier: &str, password: &Password) -> bool {
    let Some(rest) = verifier.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, _keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iterations, salt)) = params.split_once(':') else {
        return false;
    };
    let (Ok(iterations), Ok(salt)) = (iterations.parse::<u32>(), BASE64.decode(salt)) else {
        return false;
    };
    if iterations == 0 || iterations > 10_000_000 {
        return false;
    }
    scram_verifier_with(password, &salt, iterations) == verifier
}

fn scram_verifier_with(password: &Password, salt: &[u8], iterations: u32) -> String {
    let prepared = stringprep::saslprep(password.expose());
    let bytes = match &prepared {
        Ok(p) => p.as_bytes(),
        Err(_) => password.expose().as_bytes(),
    };
    let salted = pbkdf2_sha256(bytes, salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

/// PBKDF2-HMAC-SHA-256 with one 32-byte output block (`Hi()` of RFC 5802).
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    // HMAC accepts keys of any length (longer ones are hashed), so this cannot fail.
    let mac = Hmac::<Sha256>::new_from_slice(password).expect("HMAC takes keys of any length");
    let mut block = mac.clone();
    block.update(salt);
    block.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = block.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut next = mac.clone();
        next.update(&u);
        u = next.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length (longer ones are hashed), so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The MariaDB `mysql_native_password` hash of `password`: `*` and the upper-case hex of
/// SHA1(SHA1(password)), as `PASSWORD()` computes it and `IDENTIFIED BY PASSWORD '...'`
/// accepts it. Deterministic, so the stored hash tells whether the password changed.
///
/// ```
/// use database_operator::password::{Password, mariadb_native_hash};
/// // SELECT PASSWORD('password') on MariaDB
/// assert_eq!(
///     mariadb_native_hash(&Password::new("password")),
///     "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
/// );
/// ```
pub fn mariadb_native_hash(password: &Password) -> String {
    let once = Sha1::digest(password.expose().as_bytes());
    let twice = Sha1::digest(once);
    format!("*{}", hex::encode_upper(twice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_differ_and_are_alphanumeric() {
        let a = Password::generate();
        let b = Password::generate();
        assert_ne!(a, b);
        for p in [&a, &b] {
            assert_eq!(p.expose().len(), GENERATED_LEN);
            assert!(p.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn scram_matches_the_rfc_7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
        // 4096 iterations; the client proof there follows from this StoredKey.
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = scram_verifier_with(&Password::new("pencil"), &salt, 4096);
        let salted = pbkdf2_sha256(b"pencil", &salt, 4096);
        let client_key = hmac_sha256(&salted, b"Client Key");
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
                            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
                            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let stored_key = Sha256::digest(client_key);
        let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        assert_eq!(
            BASE64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(v.contains(&BASE64.encode(stored_key)));
        let server_key = hmac_sha256(&salted, b"Server Key");
        let server_signature = hmac_sha256(&server_key, auth_message.as_bytes());
        assert_eq!(
            BASE64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn verifiers_are_salted_and_safe_in_a_literal() {
        let p = Password::new("it's a \"test\" \\ ; --");
        let (a, b) = (postgres_scram_verifier(&p), postgres_scram_verifier(&p));
        assert_ne!(a, b, "random salt");
        assert!(scram_verifier_matches(&a, &p) && scram_verifier_matches(&b, &p));
        for v in [&a, &b] {
            assert!(
                v.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"$:+/=-".contains(&c)),
                "{v}"
            );
        }
        assert!(!scram_verifier_matches("md5abcdef", &p));
        assert!(!scram_verifier_matches("SCRAM-SHA-256$0:AAAA$x:y", &p));
    }

    #[test]
    fn mariadb_hash_is_safe_in_a_literal() {
        let h = mariadb_native_hash(&Password::new("x'; DROP USER root; --"));
        assert_eq!(h.len(), 41);
        assert!(
            h[1..]
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
    }
}

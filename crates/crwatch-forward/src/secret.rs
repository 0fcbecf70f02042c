//! Secrets in sink configurations (passwords, tokens, URLs with credentials): given inline, in
//! a file or in an environment variable, read once when a sink is built or checked, and never
//! shown: errors name the setting, the file or the variable, never the value, and URLs are
//! redacted before they reach a log line, an error or `Debug` output.

use std::path::Path;

use anyhow::Context;

/// The secret from the first of `inline`, `file` (trailing newlines dropped) or the
/// environment variable `env` that is set; `None` if none is. `what` is the inline setting's
/// name (`"mqtt.password"`); errors name `{what}File` or `{what}Env`. A variable that is not
/// UTF-8 is an error that does not quote it (`std::env::var`'s own error would).
///
/// ```
/// use crwatch_forward::secret::read;
/// assert_eq!(read(Some("pw"), None, None, "x.password").unwrap().as_deref(), Some("pw"));
/// assert_eq!(read(None, None, None, "x.password").unwrap(), None);
/// let err = read(None, None, Some("CRWATCH_DOC_UNSET_VARIABLE"), "x.password").unwrap_err();
/// assert_eq!(err.to_string(), "x.passwordEnv: environment variable CRWATCH_DOC_UNSET_VARIABLE is not set");
/// ```
pub fn read(
    inline: Option<&str>,
    file: Option<&Path>,
    env: Option<&str>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(value) = inline {
        return Ok(Some(value.to_string()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{what}File: reading {}", path.display()))?;
        return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
    }
    if let Some(var) = env {
        let value = std::env::var_os(var)
            .with_context(|| format!("{what}Env: environment variable {var} is not set"))?;
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{what}Env: environment variable {var} is not valid UTF-8"))?;
        return Ok(Some(value));
    }
    Ok(None)
}

/// `scheme://user:password@host…` with the password (or lone userinfo, often a token)
/// replaced by `***`; the rest is kept.
///
/// ```
/// use crwatch_forward::secret::redact_url;
/// assert_eq!(redact_url("amqp://app:s3cret@mq:5672/%2f"), "amqp://app:***@mq:5672/%2f");
/// assert_eq!(redact_url("nats://tok@h:1"), "nats://***@h:1");
/// assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
/// assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let redacted = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{redacted}{}", &url[..scheme_end + 3], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_lose_trailing_newlines_and_errors_never_show_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\r\n").unwrap();
        assert_eq!(
            read(None, Some(&path), None, "p").unwrap().as_deref(),
            Some("s3cret")
        );
        let missing = dir.path().join("missing");
        let err = format!("{:#}", read(None, Some(&missing), None, "p").unwrap_err());
        assert!(err.starts_with("pFile: reading "), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_variable_that_is_not_utf8_is_named_not_quoted() {
        use std::os::unix::ffi::OsStrExt;
        let var = "CRWATCH_SECRET_TEST_NOT_UTF8";
        // SAFETY: this test alone uses the variable, and no other test of this crate reads
        // the environment concurrently by this name.
        unsafe { std::env::set_var(var, std::ffi::OsStr::from_bytes(b"s3cret\xff")) };
        let err = format!("{:#}", read(None, None, Some(var), "p").unwrap_err());
        unsafe { std::env::remove_var(var) };
        assert_eq!(
            err,
            format!("pEnv: environment variable {var} is not valid UTF-8")
        );
    }
}

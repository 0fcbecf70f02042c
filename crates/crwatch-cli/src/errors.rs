//! API-server errors worded as kubectl words them, for every command: a server that cannot be
//! reached is a [`ConnectError`] ("The connection to the server 127.0.0.1:6443 was refused -
//! did you specify the right host or port?"), a server's refusal a [`ServerError`] ("Error
//! from server (Forbidden): ..."). `main` prints both without the `error: ` prefix, as kubectl
//! does. Kube errors and source errors go through one mapping ([`from_kind`]).

use crwatch::source::{ErrorKind, SourceError};

/// An error the API server returned, printed as kubectl prints it:
/// `Error from server (NotFound): databases.stable.example.com "x" not found`.
#[derive(Debug)]
pub struct ServerError {
    /// The Status reason, e.g. `NotFound`.
    pub reason: String,
    /// The Status message.
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error from server ({}): {}", self.reason, self.message)
    }
}

impl std::error::Error for ServerError {}

/// The server could not be reached, printed as kubectl prints it:
/// `The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?`
#[derive(Debug)]
pub struct ConnectError {
    /// The server URL tried, e.g. `https://127.0.0.1:6443` (`None` if unknown).
    pub url: Option<String>,
    /// Whether the connection was refused (nothing listens there).
    pub refused: bool,
    /// The innermost cause, e.g. `Connection refused (os error 111)`.
    pub cause: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.as_deref().unwrap_or("").trim_end_matches('/');
        let host = url.split_once("://").map_or(url, |(_, h)| h);
        match (self.refused, host.is_empty()) {
            (true, false) => write!(
                f,
                "The connection to the server {host} was refused - did you specify the right host or port?"
            ),
            (true, true) => write!(
                f,
                "The connection to the server was refused - did you specify the right host or port?"
            ),
            (false, false) => write!(f, "Unable to connect to the server {url}: {}", self.cause),
            (false, true) => write!(f, "Unable to connect to the server: {}", self.cause),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A failure of `kind` as kubectl words it (`None` for kinds kubectl has no words for).
///
/// ```
/// use crwatch::source::ErrorKind;
/// let e = crwatch_cli::errors::from_kind(
///     ErrorKind::Transport { refused: true, cause: "Connection refused".into() },
///     Some("https://127.0.0.1:6443"),
/// ).unwrap();
/// assert_eq!(e.to_string(), "The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?");
/// ```
pub fn from_kind(kind: ErrorKind, url: Option<&str>) -> Option<anyhow::Error> {
    match kind {
        ErrorKind::Server { code: 401, .. } => Some(anyhow::anyhow!(
            "You must be logged in to the server (Unauthorized)"
        )),
        ErrorKind::Server {
            code,
            reason,
            message,
        } => Some(
            ServerError {
                reason: if reason.is_empty() {
                    code.to_string()
                } else {
                    reason
                },
                message,
            }
            .into(),
        ),
        ErrorKind::Transport { refused, cause } => Some(
            ConnectError {
                url: url.map(str::to_string),
                refused,
                cause,
            }
            .into(),
        ),
        _ => None,
    }
}

/// A kube error as the user should read it: server errors as kubectl prints them, transport
/// errors as [`ConnectError`], anything else with `what` for context.
pub fn explain(e: kube::Error, what: &str) -> anyhow::Error {
    from_kind(crwatch::source::kube::error_kind(&e), None)
        .unwrap_or_else(|| anyhow::Error::new(e).context(what.to_string()))
}

/// A source's error as kubectl words it.
pub fn explain_source(e: SourceError) -> anyhow::Error {
    let message = e.message;
    from_kind(e.kind, None).unwrap_or_else(|| anyhow::anyhow!("{message}"))
}

/// `e` (from discovery or any request to the server at `url`) worded as kubectl words it when
/// it is a transport failure or a refusal; anything else unchanged.
pub fn explain_kube(e: anyhow::Error, url: &str) -> anyhow::Error {
    let Some(kube_error) = e.chain().find_map(|c| c.downcast_ref::<kube::Error>()) else {
        return e;
    };
    from_kind(crwatch::source::kube::error_kind(kube_error), Some(url)).unwrap_or(e)
}

/// [`explain`] for an error that may wrap a kube error (as discovery's do): only transport
/// failures and authentication or authorization refusals are reworded.
pub fn explain_any(e: anyhow::Error) -> anyhow::Error {
    let reworded = e.downcast_ref::<kube::Error>().is_some_and(|k| {
        matches!(
            crwatch::source::kube::error_kind(k),
            ErrorKind::Transport { .. } | ErrorKind::Server { code: 401 | 403, .. }
        )
    });
    if reworded {
        let what = e.to_string();
        match e.downcast::<kube::Error>() {
            Ok(k) => explain(k, &what),
            Err(e) => e,
        }
    } else {
        e
    }
}

//! API-server errors worded as kubectl words them, for commands other than `crwatch get`
//! (which has its own [`explain`](crate::get) for the errors of its list and watch): a server
//! that cannot be reached is a [`ConnectError`] ("The connection to the server 127.0.0.1:6443
//! was refused - did you specify the right host or port?"), a server's refusal a
//! [`ServerError`] ("Error from server (Forbidden): ..."). `main` prints both without the
//! `error: ` prefix, as kubectl does.

pub use crate::get::{ConnectError, ServerError};

/// `e` (from discovery or any request to the server at `url`) worded as kubectl words it when
/// it is a transport failure or a refusal; anything else unchanged.
pub fn explain_kube(e: anyhow::Error, url: &str) -> anyhow::Error {
    let Some(kube_error) = e.chain().find_map(|c| c.downcast_ref::<kube::Error>()) else {
        return e;
    };
    match kube_error {
        kube::Error::Api(s) if s.code == 401 => {
            anyhow::anyhow!("You must be logged in to the server (Unauthorized)")
        }
        kube::Error::Api(s) => ServerError {
            reason: if s.reason.is_empty() {
                s.code.to_string()
            } else {
                s.reason.clone()
            },
            message: s.message.clone(),
        }
        .into(),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            let (cause, refused) = root_cause(kube_error);
            ConnectError {
                url: Some(url.to_string()),
                refused,
                cause,
            }
            .into()
        }
        _ => e,
    }
}

/// The innermost message of an error chain, and whether an I/O error in it was a refusal.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> (String, bool) {
    let mut cur = e;
    let mut refused = false;
    loop {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        match cur.source() {
            Some(next) => cur = next,
            None => return (cur.to_string(), refused),
        }
    }
}

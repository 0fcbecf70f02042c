//! Retrying read-modify-write calls that lost an optimistic-concurrency race (409 Conflict),
//! the way client-go's `retry.RetryOnConflict` does, with its backoff defaults.
//!
//! Kubernetes rejects an update whose `metadata.resourceVersion` is not the current one with
//! 409 Conflict. The fix is always the same: read the object again, re-apply the change,
//! write again. [`retry_on_conflict`] runs that loop; the closure must do the re-read itself
//! (re-sending the same stale object would conflict forever).

use std::future::Future;
use std::time::Duration;

/// How often and how fast to retry (client-go's `wait.Backoff`).
///
/// The closure runs at most `steps` times. Between runs the helper sleeps `duration`, which is
/// multiplied by `factor` after every sleep (never beyond `cap`), and each sleep is stretched
/// by a random share of up to `jitter` of itself so that competing writers spread out.
///
/// ```
/// use std::time::Duration;
/// use crwatch::retry::Backoff;
///
/// // client-go's retry.DefaultRetry: 5 tries, 10 ms apart, +0–10 % jitter.
/// assert_eq!(Backoff::default(), Backoff::DEFAULT_RETRY);
/// let patient = Backoff { steps: 10, duration: Duration::from_millis(50), ..Backoff::DEFAULT_RETRY };
/// assert_eq!(patient.factor, 1.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// How many times the closure may run in all (0 is treated as 1).
    pub steps: u32,
    /// The first pause between runs.
    pub duration: Duration,
    /// What the pause is multiplied by after each run (1.0 keeps it constant).
    pub factor: f64,
    /// Each pause grows by a random fraction in `[0, jitter)` of itself (0 for none).
    pub jitter: f64,
    /// The pause never grows beyond this.
    pub cap: Option<Duration>,
}

impl Backoff {
    /// client-go's `retry.DefaultRetry`: 5 steps, 10 ms, factor 1.0, jitter 0.1. Meant for
    /// conflicts, which clear up as soon as the loser re-reads.
    ///
    /// ```
    /// assert_eq!(crwatch::retry::Backoff::DEFAULT_RETRY.steps, 5);
    /// ```
    pub const DEFAULT_RETRY: Backoff = Backoff {
        steps: 5,
        duration: Duration::from_millis(10),
        factor: 1.0,
        jitter: 0.1,
        cap: None,
    };

    /// client-go's `retry.DefaultBackoff`: 4 steps, 10 ms, factor 5.0, jitter 0.1. Meant for
    /// errors that take a moment to clear (a server that is briefly unavailable).
    ///
    /// ```
    /// assert_eq!(crwatch::retry::Backoff::DEFAULT_BACKOFF.factor, 5.0);
    /// ```
    pub const DEFAULT_BACKOFF: Backoff = Backoff {
        steps: 4,
        duration: Duration::from_millis(10),
        factor: 5.0,
        jitter: 0.1,
        cap: None,
    };

    /// The pauses this backoff takes between runs, jitter applied (one fewer than `steps`).
    fn pauses(self) -> impl Iterator<Item = Duration> {
        let mut next = self.duration;
        (1..self.steps.max(1)).map(move |_| {
            let base = next;
            if self.factor > 0.0 {
                let grown = next.mul_f64(self.factor);
                next = self.cap.map_or(grown, |cap| grown.min(cap));
            }
            if self.jitter > 0.0 {
                base + base.mul_f64(rand::random::<f64>() * self.jitter)
            } else {
                base
            }
        })
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT_RETRY
    }
}

/// Whether `err` is the API server's 409 Conflict (a stale `resourceVersion`, or a create
/// that found the name taken: both answer "someone else wrote first").
///
/// ```
/// use crwatch::retry::is_conflict;
/// use kube::core::Status;
///
/// let modified = Status::failure("the object has been modified", "Conflict").with_code(409);
/// let conflict = kube::Error::Api(Box::new(modified));
/// assert!(is_conflict(&conflict));
/// let gone = kube::Error::Api(Box::new(Status::failure("not found", "NotFound").with_code(404)));
/// assert!(!is_conflict(&gone));
/// ```
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// Run `f` again while it fails with 409 Conflict, pausing as `backoff` says; any other
/// result (success or another error) returns at once. When the steps run out, the last
/// conflict is returned.
///
/// `f` must re-read the object on every call and re-apply its change to what it read.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), kube::Error> {
/// use crwatch::retry::{Backoff, retry_on_conflict};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::api::{Api, PostParams};
///
/// let cms: Api<ConfigMap> = Api::namespaced(client, "default");
/// let updated = retry_on_conflict(Backoff::default(), || async {
///     let mut cm = cms.get("settings").await?;
///     cm.data.get_or_insert_default().insert("mode".into(), "fast".into());
///     cms.replace("settings", &PostParams::default(), &cm).await
/// })
/// .await?;
/// # let _ = updated; Ok(()) }
/// ```
pub async fn retry_on_conflict<T, F, Fut>(backoff: Backoff, f: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    retry_on_error(backoff, is_conflict, f).await
}

/// Like [`retry_on_conflict`] with a caller-chosen test of which errors are worth another
/// try (client-go's `retry.OnError`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use crwatch::retry::{Backoff, retry_on_error};
///
/// let mut calls = 0;
/// let out: Result<u32, &str> = retry_on_error(Backoff::default(), |e| *e == "busy", || {
///     calls += 1;
///     let n = calls;
///     async move { if n < 3 { Err("busy") } else { Ok(n) } }
/// })
/// .await;
/// assert_eq!(out, Ok(3));
/// # }
/// ```
pub async fn retry_on_error<T, E, R, F, Fut>(backoff: Backoff, retriable: R, mut f: F) -> Result<T, E>
where
    R: Fn(&E) -> bool,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pauses = backoff.pauses();
    loop {
        match f().await {
            Err(e) if retriable(&e) => match pauses.next() {
                Some(pause) => {
                    tracing::debug!(?pause, "retriable error, trying again");
                    tokio::time::sleep(pause).await;
                }
                None => return Err(e),
            },
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn status(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(reason, reason).with_code(code),
        ))
    }

    #[test]
    fn default_retry_matches_client_go() {
        let pauses: Vec<_> = Backoff::DEFAULT_RETRY.pauses().collect();
        assert_eq!(pauses.len(), 4, "5 steps means 4 pauses");
        for p in pauses {
            assert!(
                p >= Duration::from_millis(10) && p < Duration::from_millis(11),
                "{p:?}"
            );
        }
        let grow: Vec<_> = Backoff {
            jitter: 0.0,
            cap: Some(Duration::from_millis(300)),
            ..Backoff::DEFAULT_BACKOFF
        }
        .pauses()
        .collect();
        assert_eq!(grow, [10, 50, 250].map(Duration::from_millis));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_steps_with_the_last_conflict() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let out: Result<(), _> = retry_on_conflict(Backoff::default(), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(status(409, "Conflict")) }
        })
        .await;
        assert!(matches!(out, Err(ref e) if is_conflict(e)));
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_millis(45),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_return_at_once() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = retry_on_conflict(Backoff::default(), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(status(500, "InternalError")) }
        })
        .await;
        assert!(matches!(out, Err(kube::Error::Api(ref s)) if s.code == 500));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    mod against_server {
        use super::super::*;
        use crwatch_apiserver::TestServer;
        use k8s_openapi::api::core::v1::ConfigMap;
        use kube::api::{Api, PostParams};
        use std::collections::BTreeMap;
        use std::sync::atomic::{AtomicU32, Ordering};

        fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
            let mut cm = ConfigMap::default();
            cm.metadata.name = Some(name.into());
            cm.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
            cm
        }

        #[tokio::test]
        async fn a_concurrent_writer_costs_one_retry() {
            let server = TestServer::start().await.unwrap();
            let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
            cms.create(&PostParams::default(), &cm("shared", &[("a", "1")]))
                .await
                .unwrap();

            let calls = AtomicU32::new(0);
            let out = retry_on_conflict(Backoff::default(), || async {
                let mut mine = cms.get("shared").await?;
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Someone else writes between our read and our write, once.
                    let mut theirs = cms.get("shared").await?;
                    theirs.data.get_or_insert_default().insert("b".into(), "2".into());
                    cms.replace("shared", &PostParams::default(), &theirs).await?;
                }
                mine.data.get_or_insert_default().insert("c".into(), "3".into());
                cms.replace("shared", &PostParams::default(), &mine).await
            })
            .await
            .unwrap();

            assert_eq!(
                calls.load(Ordering::SeqCst),
                2,
                "first attempt conflicts, second succeeds"
            );
            let want: BTreeMap<String, String> = [("a", "1"), ("b", "2"), ("c", "3")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(
                out.data,
                Some(want.clone()),
                "the retry re-read and kept the other writer's change"
            );
            assert_eq!(cms.get("shared").await.unwrap().data, Some(want));
        }

        #[tokio::test]
        async fn non_conflict_errors_are_not_retried() {
            let server = TestServer::start().await.unwrap();
            let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
            let calls = AtomicU32::new(0);
            let out = retry_on_conflict(Backoff::default(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                cms.get("missing").await
            })
            .await;
            assert!(
                matches!(out, Err(kube::Error::Api(ref s)) if s.code == 404),
                "{out:?}"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }
}

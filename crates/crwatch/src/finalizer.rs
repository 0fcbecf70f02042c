//! The finalizer flow: guard an object with a `metadata.finalizers` entry before doing any
//! work for it, and run cleanup (then let it go) once it is being deleted.
//!
//! Modelled on kube-runtime's `finalizer` helper, but generic over what the reconcile
//! closure returns (so it composes with `crate::controller::Action` or anything else), and
//! with errors that always name the object and the finalizer: an object stuck in
//! `Terminating` should never be a mystery.
//!
//! The flow, for a finalizer `example.com/cleanup`:
//!
//! | object state | what [`finalizer`] does |
//! | --- | --- |
//! | not deleting, finalizer missing | adds it (guarded JSON patch), then [`Event::Apply`] on the result |
//! | not deleting, finalizer present | runs [`Event::Apply`] |
//! | deleting, finalizer present | runs [`Event::Cleanup`]; only when that succeeds removes the finalizer |
//! | deleting, finalizer missing | nothing; returns `T::default()` |
//!
//! So `Apply` never runs unless the finalizer is on the object, and the object cannot
//! disappear before a `Cleanup` has succeeded. Both must be idempotent: a controller may
//! call them again after a restart, a conflict or a failure.

use std::fmt::{self, Debug, Display};
use std::future::Future;
use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// What the reconcile closure is asked to do.
///
/// ```
/// use std::sync::Arc;
/// use crwatch::finalizer::Event;
/// let event = Event::Apply(Arc::new("object"));
/// assert!(matches!(event, Event::Apply(_)));
/// ```
#[derive(Debug, Clone)]
pub enum Event<K> {
    /// Make the world match the object. The finalizer is on the object already.
    Apply(Arc<K>),
    /// The object is being deleted: release what [`Event::Apply`] created (external
    /// databases, files, ...). Must tolerate `Apply` never having run or having half-run.
    Cleanup(Arc<K>),
}

impl<K> Event<K> {
    /// The object, whichever the event.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use crwatch::finalizer::Event;
    /// let e = Event::Cleanup(Arc::new(5));
    /// assert_eq!(**e.object(), 5);
    /// ```
    pub fn object(&self) -> &Arc<K> {
        match self {
            Event::Apply(o) | Event::Cleanup(o) => o,
        }
    }
}

/// Why [`finalizer`] failed. Every variant names the object (as its API path) and, where
/// it matters, the finalizer, so the log line explains a stuck deletion on its own.
///
/// `E` is the closure's error. The type implements [`std::error::Error`] whenever `E` is
/// `Debug + Display` (no `std::error::Error` bound on `E`, so error types that cannot
/// implement it, such as anyhow-wrapping reconcile errors, still fit); the closure's error
/// text is part of the message. To keep the closure's own error (for example to preserve
/// a terminal/transient classification), use [`FinalizerError::into_closure_error`].
///
/// ```
/// use crwatch::finalizer::FinalizerError;
/// let e: FinalizerError<std::io::Error> = FinalizerError::CleanupFailed {
///     object: "/api/v1/namespaces/default/configmaps/db".into(),
///     finalizer: "example.com/cleanup".into(),
///     source: std::io::Error::other("server unreachable"),
/// };
/// assert_eq!(
///     e.to_string(),
///     "cleanup of /api/v1/namespaces/default/configmaps/db failed, so finalizer example.com/cleanup \
///      stays and deletion waits: server unreachable"
/// );
/// ```
#[derive(Debug)]
pub enum FinalizerError<E> {
    /// The closure failed on [`Event::Apply`].
    ApplyFailed {
        /// The object's API path.
        object: String,
        /// The closure's error.
        source: E,
    },
    /// The closure failed on [`Event::Cleanup`]; the finalizer stays, so deletion waits
    /// until a later cleanup succeeds.
    CleanupFailed {
        /// The object's API path.
        object: String,
        /// The finalizer that stays.
        finalizer: String,
        /// The closure's error.
        source: E,
    },
    /// Adding the finalizer failed (422 when someone changed the object since it was read:
    /// reconcile again with a fresher copy).
    AddFinalizer {
        /// The object's API path.
        object: String,
        /// The finalizer.
        finalizer: String,
        /// The API error.
        source: kube::Error,
    },
    /// Cleanup succeeded but removing the finalizer failed; cleanup will run again.
    RemoveFinalizer {
        /// The object's API path.
        object: String,
        /// The finalizer.
        finalizer: String,
        /// The API error.
        source: kube::Error,
    },
    /// The object has no `metadata.name` (only hand-built objects lack one).
    UnnamedObject {
        /// The finalizer.
        finalizer: String,
    },
}

impl<E> FinalizerError<E> {
    /// The API path of the object, when it has a name.
    ///
    /// ```
    /// use crwatch::finalizer::FinalizerError;
    /// let e = FinalizerError::<std::io::Error>::UnnamedObject { finalizer: "f".into() };
    /// assert_eq!(e.object(), None);
    /// ```
    pub fn object(&self) -> Option<&str> {
        match self {
            FinalizerError::ApplyFailed { object, .. }
            | FinalizerError::CleanupFailed { object, .. }
            | FinalizerError::AddFinalizer { object, .. }
            | FinalizerError::RemoveFinalizer { object, .. } => Some(object),
            FinalizerError::UnnamedObject { .. } => None,
        }
    }

    /// The closure's own error, when that is what failed.
    ///
    /// ```
    /// use crwatch::finalizer::FinalizerError;
    /// let e = FinalizerError::ApplyFailed { object: "o".into(), source: "boom" };
    /// assert_eq!(e.closure_error(), Some(&"boom"));
    /// ```
    pub fn closure_error(&self) -> Option<&E> {
        match self {
            FinalizerError::ApplyFailed { source, .. } | FinalizerError::CleanupFailed { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }

    /// Split into the closure's own error (`Ok`, with the context this error adds, as text)
    /// or the finalizer's own failure (`Err`, with no closure error inside).
    ///
    /// This is how a reconciler keeps its error classification: a terminal cleanup error
    /// stays terminal, an API failure of the finalizer patch becomes whatever the caller
    /// maps it to.
    ///
    /// ```
    /// use crwatch::finalizer::FinalizerError;
    /// #[derive(Debug)]
    /// enum MyError { Terminal(String), Transient(String) }
    ///
    /// let e = FinalizerError::CleanupFailed {
    ///     object: "/apis/example.com/v1/namespaces/a/dbs/x".into(),
    ///     finalizer: "example.com/cleanup".into(),
    ///     source: MyError::Terminal("refused".into()),
    /// };
    /// let mine = match e.into_closure_error() {
    ///     Ok((closure_error, context)) => {
    ///         assert!(context.contains("example.com/cleanup"));
    ///         closure_error
    ///     }
    ///     Err(finalizer_failure) => MyError::Transient(finalizer_failure.to_string()),
    /// };
    /// assert!(matches!(mine, MyError::Terminal(_)));
    /// ```
    #[allow(clippy::result_large_err)] // the Err side is this same error, handed back
    pub fn into_closure_error(self) -> Result<(E, String), FinalizerError<std::convert::Infallible>> {
        match self {
            FinalizerError::ApplyFailed { object, source } => {
                Ok((source, format!("applying {object} failed")))
            }
            FinalizerError::CleanupFailed {
                object,
                finalizer,
                source,
            } => Ok((
                source,
                format!("cleanup of {object} failed, so finalizer {finalizer} stays and deletion waits"),
            )),
            FinalizerError::AddFinalizer {
                object,
                finalizer,
                source,
            } => Err(FinalizerError::AddFinalizer {
                object,
                finalizer,
                source,
            }),
            FinalizerError::RemoveFinalizer {
                object,
                finalizer,
                source,
            } => Err(FinalizerError::RemoveFinalizer {
                object,
                finalizer,
                source,
            }),
            FinalizerError::UnnamedObject { finalizer } => Err(FinalizerError::UnnamedObject { finalizer }),
        }
    }
}

impl<E: Display> Display for FinalizerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinalizerError::ApplyFailed { object, source } => write!(f, "applying {object} failed: {source}"),
            FinalizerError::CleanupFailed {
                object,
                finalizer,
                source,
            } => write!(
                f,
                "cleanup of {object} failed, so finalizer {finalizer} stays and deletion waits: {source}"
            ),
            FinalizerError::AddFinalizer {
                object,
                finalizer,
                source,
            } => write!(f, "adding finalizer {finalizer} to {object} failed: {source}"),
            FinalizerError::RemoveFinalizer {
                object,
                finalizer,
                source,
            } => write!(
                f,
                "cleanup of {object} succeeded but removing finalizer {finalizer} failed (cleanup will run \
                 again): {source}"
            ),
            FinalizerError::UnnamedObject { finalizer } => {
                write!(
                    f,
                    "cannot manage finalizer {finalizer} on an object without metadata.name"
                )
            }
        }
    }
}

impl<E: Debug + Display> std::error::Error for FinalizerError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FinalizerError::AddFinalizer { source, .. } | FinalizerError::RemoveFinalizer { source, .. } => {
                Some(source)
            }
            // The closure's error is in the message; without an `E: Error` bound it cannot be
            // offered as a source.
            _ => None,
        }
    }
}

/// Run `reconcile` for `obj` under the finalizer `finalizer_name` (see the [module
/// docs](self) for the flow). Returns what the closure returned, or `T::default()` when there
/// was nothing to do (a deleting object that does not carry our finalizer).
///
/// `finalizer_name` must be unique to this controller (`example.com/database-protection`).
/// Use the object in the [`Event`], not `obj`: after the finalizer is added it is the newer
/// copy. Cleanup errors, transient or not, keep the finalizer and come back as
/// [`FinalizerError::CleanupFailed`]; the controller retries them like any other error.
///
/// ```no_run
/// use std::sync::Arc;
/// use crwatch::finalizer::{Event, FinalizerError, finalizer};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::api::Api;
///
/// #[derive(Debug, Default)]
/// struct Requeue(bool);
///
/// type Error = FinalizerError<std::io::Error>;
///
/// async fn reconcile(api: Api<ConfigMap>, cm: Arc<ConfigMap>) -> Result<Requeue, Error> {
///     finalizer(&api, "example.com/cleanup", cm, |event| async move {
///         match event {
///             Event::Apply(cm) => { /* create external things for cm */ Ok(Requeue(false)) }
///             Event::Cleanup(cm) => { /* delete them; errors keep the object */ Ok(Requeue(false)) }
///         }
///     })
///     .await
/// }
/// ```
pub async fn finalizer<K, T, E, F, Fut>(
    api: &Api<K>,
    finalizer_name: &str,
    obj: Arc<K>,
    reconcile: F,
) -> Result<T, FinalizerError<E>>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    T: Default,
    F: FnOnce(Event<K>) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let Some(name) = obj.meta().name.clone() else {
        return Err(FinalizerError::UnnamedObject {
            finalizer: finalizer_name.into(),
        });
    };
    let object = format!("{}/{name}", api.resource_url());
    let present = obj.finalizers().iter().any(|f| f == finalizer_name);
    let deleting = obj.meta().deletion_timestamp.is_some();
    match (present, deleting) {
        (true, false) => reconcile(Event::Apply(obj))
            .await
            .map_err(|source| FinalizerError::ApplyFailed { object, source }),
        (false, false) => {
            let patched = add_finalizer(api, &name, &obj, finalizer_name)
                .await
                .map_err(|source| FinalizerError::AddFinalizer {
                    object: object.clone(),
                    finalizer: finalizer_name.into(),
                    source,
                })?;
            tracing::info!(object, finalizer = finalizer_name, "added finalizer");
            reconcile(Event::Apply(Arc::new(patched)))
                .await
                .map_err(|source| FinalizerError::ApplyFailed { object, source })
        }
        (true, true) => {
            let done = reconcile(Event::Cleanup(obj.clone())).await.map_err(|source| {
                FinalizerError::CleanupFailed {
                    object: object.clone(),
                    finalizer: finalizer_name.into(),
                    source,
                }
            })?;
            remove_finalizer(api, &name, &obj, finalizer_name)
                .await
                .map_err(|source| FinalizerError::RemoveFinalizer {
                    object: object.clone(),
                    finalizer: finalizer_name.into(),
                    source,
                })?;
            tracing::info!(
                object,
                finalizer = finalizer_name,
                "cleanup done, removed finalizer"
            );
            Ok(done)
        }
        (false, true) => Ok(T::default()),
    }
}

/// Append the finalizer with a JSON patch whose `test` op makes it fail (422) if the list
/// changed since `obj` was read: Kubernetes does not deduplicate finalizers, and a blind
/// append could drop or double someone else's concurrent change.
async fn add_finalizer<K>(api: &Api<K>, name: &str, obj: &K, finalizer_name: &str) -> Result<K, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let ops = if obj.finalizers().is_empty() {
        // With no list there is nothing to `test`. Testing for `null` at a missing member
        // passes on the real API server (evanphx/json-patch) but is an error under RFC 6902
        // (and in servers built on it), so guard on the resourceVersion instead: any write
        // since our read, including someone adding a finalizer, fails the patch.
        json!([
            { "op": "test", "path": "/metadata/resourceVersion", "value": obj.resource_version() },
            { "op": "add", "path": "/metadata/finalizers", "value": [finalizer_name] },
        ])
    } else {
        json!([
            { "op": "test", "path": "/metadata/finalizers", "value": obj.finalizers() },
            { "op": "add", "path": "/metadata/finalizers/-", "value": finalizer_name },
        ])
    };
    let patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
    // Through crate::api: the answer (a Secret, say) never reaches a log, even undecodable.
    crate::api::patch(api, name, &PatchParams::default(), &Patch::<()>::Json(patch)).await
}

/// Remove the finalizer by index, with a `test` op so that a list that shifted meanwhile
/// (another controller removed its entry) fails rather than removing the wrong one. On such
/// a failure re-read and try again: cleanup is done, only the bookkeeping is left, and
/// sending the controller round for another cleanup would be wasted work.
async fn remove_finalizer<K>(
    api: &Api<K>,
    name: &str,
    obj: &K,
    finalizer_name: &str,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    const ATTEMPTS: usize = 3;
    let mut current = obj.clone();
    let mut attempt = 1;
    loop {
        let Some(index) = current.finalizers().iter().position(|f| f == finalizer_name) else {
            return Ok(());
        };
        let path = format!("/metadata/finalizers/{index}");
        let ops = json!([
            { "op": "test", "path": path, "value": finalizer_name },
            { "op": "remove", "path": path },
        ]);
        let patch = serde_json::from_value(ops).map_err(kube::Error::SerdeError)?;
        match crate::api::patch(api, name, &PatchParams::default(), &Patch::<()>::Json(patch)).await {
            Ok(_) => return Ok(()),
            // Someone else finished the deletion: nothing left to remove.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 422 && attempt < ATTEMPTS => {
                attempt += 1;
                match crate::api::get_opt(api, name).await? {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crwatch_apiserver::TestServer;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{DeleteParams, PostParams};
    use std::sync::atomic::{AtomicU32, Ordering};

    const FIN: &str = "test.crwatch.io/cleanup";

    #[derive(Debug, Default, PartialEq)]
    struct Done(&'static str);

    async fn setup(finalizers: &[&str]) -> (TestServer, Api<ConfigMap>, Arc<ConfigMap>) {
        let server = TestServer::start().await.unwrap();
        let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("db".into());
        if !finalizers.is_empty() {
            cm.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        }
        let created = api.create(&PostParams::default(), &cm).await.unwrap();
        (server, api, Arc::new(created))
    }

    async fn deleting(api: &Api<ConfigMap>) -> Arc<ConfigMap> {
        api.delete("db", &DeleteParams::default()).await.unwrap();
        let obj = api.get("db").await.unwrap();
        assert!(
            obj.metadata.deletion_timestamp.is_some(),
            "the finalizer holds the object"
        );
        Arc::new(obj)
    }

    #[tokio::test]
    async fn finalizer_is_added_before_apply_runs() {
        let (_server, api, obj) = setup(&[]).await;
        let applies = AtomicU32::new(0);
        let out = finalizer(&api, FIN, obj, |event| async {
            let Event::Apply(seen) = event else {
                panic!("not deleting")
            };
            assert!(
                seen.finalizers().iter().any(|f| f == FIN),
                "apply gets the patched object"
            );
            let stored = api.get("db").await.unwrap();
            assert_eq!(
                stored.finalizers(),
                [FIN],
                "the finalizer is stored before apply starts"
            );
            applies.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Done("applied"))
        })
        .await
        .unwrap();
        assert_eq!(out, Done("applied"));
        assert_eq!(applies.load(Ordering::SeqCst), 1);

        // With the finalizer present, apply runs without another patch.
        let obj = Arc::new(api.get("db").await.unwrap());
        finalizer(&api, FIN, obj, |_| async {
            Ok::<_, std::io::Error>(Done("again"))
        })
        .await
        .unwrap();
        assert_eq!(
            api.get("db").await.unwrap().finalizers(),
            [FIN],
            "not added twice"
        );
    }

    #[tokio::test]
    async fn appends_after_other_finalizers_and_refuses_a_stale_list() {
        let (_server, api, obj) = setup(&["other.io/x"]).await;
        finalizer(&api, FIN, obj.clone(), |_| async {
            Ok::<_, std::io::Error>(Done("ok"))
        })
        .await
        .unwrap();
        assert_eq!(api.get("db").await.unwrap().finalizers(), ["other.io/x", FIN]);

        // `obj` still shows the old list: the test op refuses, apply does not run.
        let err = finalizer(&api, "second.io/y", obj, |_| async {
            panic!("apply must not run when the finalizer could not be added");
            #[allow(unreachable_code)]
            Ok::<Done, std::io::Error>(Done(""))
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&err, FinalizerError::AddFinalizer { source: kube::Error::Api(s), .. } if s.code == 422)
        );
        assert!(
            err.to_string().contains("second.io/y") && err.to_string().contains("configmaps/db"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn delete_runs_cleanup_once_and_the_object_goes() {
        let (_server, api, obj) = setup(&[]).await;
        finalizer(&api, FIN, obj, |_| async {
            Ok::<_, std::io::Error>(Done("applied"))
        })
        .await
        .unwrap();
        let obj = deleting(&api).await;

        let cleanups = AtomicU32::new(0);
        let out = finalizer(&api, FIN, obj, |event| {
            assert!(matches!(event, Event::Cleanup(_)));
            cleanups.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(Done("cleaned")) }
        })
        .await
        .unwrap();
        assert_eq!(out, Done("cleaned"));
        assert_eq!(cleanups.load(Ordering::SeqCst), 1);
        assert!(
            api.get_opt("db").await.unwrap().is_none(),
            "last finalizer gone, object deleted"
        );
    }

    #[tokio::test]
    async fn failed_cleanup_keeps_the_object_and_says_why() {
        let (_server, api, obj) = setup(&[]).await;
        finalizer(&api, FIN, obj, |_| async { Ok::<_, std::io::Error>(Done("")) })
            .await
            .unwrap();
        let obj = deleting(&api).await;

        let err = finalizer(&api, FIN, obj.clone(), |_| async {
            Err::<Done, _>(std::io::Error::other("database server unreachable"))
        })
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, FinalizerError::CleanupFailed { .. }));
        for part in [
            "/api/v1/namespaces/default/configmaps/db",
            FIN,
            "database server unreachable",
        ] {
            assert!(text.contains(part), "{text:?} lacks {part:?}");
        }
        let stored = api.get("db").await.unwrap();
        assert_eq!(
            stored.finalizers(),
            [FIN],
            "finalizer kept after a failed cleanup"
        );

        // The retry succeeds and the object goes.
        finalizer(&api, FIN, obj, |_| async { Ok::<_, std::io::Error>(Done("")) })
            .await
            .unwrap();
        assert!(api.get_opt("db").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn removal_copes_with_a_shifted_list_and_leaves_others() {
        let (server, api, obj) = setup(&["a.io/first", FIN, "b.io/last"]).await;
        let stale = deleting(&api).await;
        // Another controller finishes first: our finalizer moves from index 1 to 0.
        let fresh = api.get("db").await.unwrap();
        let rest: Vec<String> = fresh
            .finalizers()
            .iter()
            .filter(|f| *f != "a.io/first")
            .cloned()
            .collect();
        let patch = json!({"metadata": {"finalizers": rest}});
        api.patch("db", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        drop(obj);

        let out = finalizer(&api, FIN, stale, |_| async {
            Ok::<_, std::io::Error>(Done("cleaned"))
        })
        .await;
        assert_eq!(out.unwrap(), Done("cleaned"));
        assert_eq!(
            api.get("db").await.unwrap().finalizers(),
            ["b.io/last"],
            "only ours removed"
        );
        // The other controller's merge patch, our refused JSON patch, our re-aimed one.
        assert_eq!(server.faults().count("patch", "configmaps"), 3);
    }

    /// The shape of `crate::controller::{Action, ReconcileError}`, copied so this module
    /// does not depend on the controller: an error that is not `std::error::Error` and
    /// converts from anything anyhow accepts.
    mod controller_shape {
        #[derive(Debug, Default, PartialEq)]
        pub struct Action;

        pub enum ReconcileError {
            Transient(anyhow::Error),
            Terminal(anyhow::Error),
        }

        impl<E: Into<anyhow::Error>> From<E> for ReconcileError {
            fn from(e: E) -> Self {
                ReconcileError::Transient(e.into())
            }
        }

        impl std::fmt::Debug for ReconcileError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(self, f)
            }
        }

        impl std::fmt::Display for ReconcileError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    ReconcileError::Transient(e) => write!(f, "transient: {e:#}"),
                    ReconcileError::Terminal(e) => write!(f, "terminal: {e:#}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn composes_with_a_controller_error_type() {
        use controller_shape::{Action, ReconcileError};

        // `?` works (everything becomes transient) ...
        async fn reconcile(api: &Api<ConfigMap>, obj: Arc<ConfigMap>) -> Result<Action, ReconcileError> {
            Ok(finalizer(api, FIN, obj, |_| async {
                Err::<Action, _>(ReconcileError::Terminal(anyhow::anyhow!("bad spec")))
            })
            .await?)
        }
        // ... and into_closure_error keeps the closure's classification.
        async fn reconcile_keeping_class(
            api: &Api<ConfigMap>,
            obj: Arc<ConfigMap>,
        ) -> Result<Action, ReconcileError> {
            let out = finalizer(api, FIN, obj, |_| async {
                Err::<Action, _>(ReconcileError::Terminal(anyhow::anyhow!("bad spec")))
            });
            out.await.map_err(|e| match e.into_closure_error() {
                Ok((ReconcileError::Terminal(e), context)) => ReconcileError::Terminal(e.context(context)),
                Ok((ReconcileError::Transient(e), context)) => ReconcileError::Transient(e.context(context)),
                Err(finalizer_failure) => ReconcileError::Transient(finalizer_failure.into()),
            })
        }

        let (_server, api, obj) = setup(&[FIN]).await;
        let plain = reconcile(&api, obj.clone()).await.unwrap_err();
        assert!(matches!(plain, ReconcileError::Transient(_)));
        assert!(plain.to_string().contains("bad spec"), "{plain}");
        let kept = reconcile_keeping_class(&api, obj).await.unwrap_err();
        assert!(matches!(kept, ReconcileError::Terminal(_)));
        assert!(
            kept.to_string().contains("configmaps/db failed: bad spec"),
            "{kept}"
        );
    }

    #[tokio::test]
    async fn deleting_without_our_finalizer_does_nothing() {
        let (_server, api, _) = setup(&["other.io/x"]).await;
        let obj = deleting(&api).await;
        let out = finalizer(&api, FIN, obj, |_| async {
            panic!("neither apply nor cleanup may run");
            #[allow(unreachable_code)]
            Ok::<Done, std::io::Error>(Done("x"))
        })
        .await
        .unwrap();
        assert_eq!(out, Done::default());
    }
}

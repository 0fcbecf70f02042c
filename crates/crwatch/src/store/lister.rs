//! Read-only views of a store (client-go's listers) and the label-selector parser they use.
//!
//! kube-core 5 has the selector *model* and matching (`kube::core::Selector`,
//! `Expression`, `SelectorExt::matches`) but no parser for the string form users type
//! (`-l app=web,tier in (a,b),!x`), so this file parses into kube-core's types and reuses its
//! matching. The grammar follows apimachinery's `labels.Parse`, except `<`/`>` (which kube-core
//! cannot express) are rejected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use kube::Resource;
use kube::core::{Expression, Selector, SelectorExt};

use super::compact::Slot;
use super::{ObjectKey, Store};

/// A read-only view of a [`Store`]: what reconcilers and handlers get, so they cannot
/// corrupt the cache. Cheap to clone; always sees the store's current content.
///
/// ```
/// use crwatch::store::Store;
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// let store = Store::<ConfigMap>::new();
/// let lister = store.lister();
/// let mut cm = ConfigMap::default();
/// cm.metadata.namespace = Some("default".into());
/// cm.metadata.name = Some("a".into());
/// cm.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
/// store.apply(cm);
/// assert!(lister.get(Some("default"), "a").is_some());
/// assert_eq!(lister.list_selector("app=web")?.len(), 1);
/// # Ok::<(), crwatch::store::SelectorError>(())
/// ```
pub struct Lister<K> {
    store: Store<K>,
}

impl<K> Clone for Lister<K> {
    fn clone(&self) -> Self {
        Lister {
            store: self.store.clone(),
        }
    }
}

impl<K> fmt::Debug for Lister<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Lister").field(&self.store).finish()
    }
}

/// Labels of an object, or an empty map: kube-core matches against a `BTreeMap`.
fn labels_of<K: Resource>(obj: &K) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    obj.meta().labels.as_ref().unwrap_or(&EMPTY)
}

impl<K: Resource + Clone + Send + Sync + 'static> Lister<K> {
    pub(super) fn new(store: Store<K>) -> Self {
        Lister { store }
    }

    /// The object `name` in namespace `ns` (`None` for cluster-scoped).
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::Namespace;
    ///
    /// let store = Store::<Namespace>::new();
    /// let mut ns = Namespace::default();
    /// ns.metadata.name = Some("prod".into());
    /// store.apply(ns);
    /// assert!(store.lister().get(None, "prod").is_some());
    /// ```
    pub fn get(&self, ns: Option<&str>, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectKey::new(ns, name))
    }

    /// All objects, sorted by key.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert!(Store::<ConfigMap>::new().lister().list().is_empty());
    /// ```
    pub fn list(&self) -> Vec<Arc<K>> {
        self.store.list()
    }

    /// All objects of one namespace, sorted by name. The empty namespace means all
    /// namespaces, as client-go's `NamespaceAll`. Uses the key order rather than the namespace
    /// index, so it works even if that index was replaced.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// for (ns, name) in [("a", "x"), ("b", "y"), ("a", "z")] {
    ///     let mut cm = ConfigMap::default();
    ///     cm.metadata.namespace = Some(ns.into());
    ///     cm.metadata.name = Some(name.into());
    ///     store.apply(cm);
    /// }
    /// assert_eq!(store.lister().list_namespace("a").len(), 2);
    /// ```
    pub fn list_namespace(&self, ns: &str) -> Vec<Arc<K>> {
        if ns.is_empty() {
            return self.list();
        }
        let start = ObjectKey {
            namespace: Some(ns.to_owned()),
            name: String::new(),
        };
        self.store.collect(|st| {
            st.objects
                .range(start..)
                .take_while(|(k, _)| k.namespace.as_deref() == Some(ns))
                .map(|(_, e)| e.obj.clone())
                .collect()
        })
    }

    /// Objects whose labels match a selector in kubectl's `-l` syntax: `a=b`, `a==b`, `a!=b`,
    /// `a in (x,y)`, `a notin (x,y)`, `a` (exists), `!a` (does not exist), joined by commas.
    /// The empty selector matches everything.
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// let mut cm = ConfigMap::default();
    /// cm.metadata.name = Some("a".into());
    /// cm.metadata.labels = Some([("app".to_string(), "web".to_string()), ("tier".to_string(), "a".to_string())].into());
    /// store.apply(cm);
    /// let l = store.lister();
    /// assert_eq!(l.list_selector("app=web,tier in (a,b),!x")?.len(), 1);
    /// assert_eq!(l.list_selector("app!=web")?.len(), 0);
    /// assert!(l.list_selector("app in a").is_err());
    /// # Ok::<(), crwatch::store::SelectorError>(())
    /// ```
    pub fn list_selector(&self, selector: &str) -> Result<Vec<Arc<K>>, SelectorError> {
        let sel = parse_selector(selector)?;
        Ok(self.list_matching(&sel))
    }

    /// Objects of one namespace whose labels match a selector (syntax as in
    /// [`Lister::list_selector`]).
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// let store = Store::<ConfigMap>::new();
    /// for ns in ["a", "b"] {
    ///     let mut cm = ConfigMap::default();
    ///     cm.metadata.namespace = Some(ns.into());
    ///     cm.metadata.name = Some("x".into());
    ///     cm.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    ///     store.apply(cm);
    /// }
    /// assert_eq!(store.lister().list_namespace_selector("a", "app")?.len(), 1);
    /// # Ok::<(), crwatch::store::SelectorError>(())
    /// ```
    pub fn list_namespace_selector(&self, ns: &str, selector: &str) -> Result<Vec<Arc<K>>, SelectorError> {
        let sel = parse_selector(selector)?;
        let mut objs = self.list_namespace(ns);
        objs.retain(|o| sel.matches(labels_of(&**o)));
        Ok(objs)
    }

    /// Objects whose labels match an already built kube-core [`Selector`].
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use kube::core::{Expression, Selector};
    ///
    /// let store = Store::<ConfigMap>::new();
    /// let sel: Selector = Expression::Exists("app".into()).into();
    /// assert!(store.lister().list_matching(&sel).is_empty());
    /// ```
    pub fn list_matching(&self, selector: &Selector) -> Vec<Arc<K>> {
        let mut objs = self.store.collect(|st| {
            st.objects
                .values()
                .filter(|e| match &e.obj {
                    Slot::Hot(o) => selector.matches(labels_of(&**o)),
                    // Matched once decoded, below.
                    Slot::Cold(_) => true,
                })
                .map(|e| e.obj.clone())
                .collect()
        });
        objs.retain(|o| selector.matches(labels_of(&**o)));
        objs
    }

    /// Objects filed under `value` in index `index` (see [`Store::by_index`]).
    ///
    /// ```
    /// use crwatch::store::{OWNER_INDEX, Store};
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert!(Store::<ConfigMap>::new().lister().by_index(OWNER_INDEX, "uid").is_empty());
    /// ```
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<K>> {
        self.store.by_index(index, value)
    }

    /// Whether the underlying store has synced (see [`Store::has_synced`]).
    ///
    /// ```
    /// use crwatch::store::Store;
    /// use k8s_openapi::api::core::v1::ConfigMap;
    ///
    /// assert!(!Store::<ConfigMap>::new().lister().has_synced());
    /// ```
    pub fn has_synced(&self) -> bool {
        self.store.has_synced()
    }
}

/// A label selector string that does not parse.
///
/// ```
/// use crwatch::store::parse_selector;
///
/// let err = parse_selector("app in (a").unwrap_err();
/// assert!(err.to_string().contains("app in (a"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid label selector {selector:?} at byte {pos}: {reason}; expected comma-separated requirements like \"app=web\", \"tier in (a,b)\", \"!legacy\""
)]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// Byte offset of the problem.
    pub pos: usize,
    /// What went wrong.
    pub reason: String,
}

/// Parses a label selector in kubectl's `-l` syntax into kube-core's [`Selector`], which
/// can also be passed to `ListParams::labels_from`.
///
/// ```
/// use crwatch::store::parse_selector;
///
/// let sel = parse_selector("app = web, tier notin (a,b), !legacy")?;
/// assert_eq!(sel.to_string(), "app=web,tier notin (a,b),!legacy");
/// assert!(parse_selector("")?.selects_all());
/// assert!(parse_selector("a>1").is_err());
/// # Ok::<(), crwatch::store::SelectorError>(())
/// ```
pub fn parse_selector(selector: &str) -> Result<Selector, SelectorError> {
    let mut p = Parser {
        src: selector,
        pos: 0,
    };
    let mut exprs = Vec::new();
    p.skip_ws();
    if p.at_end() {
        return Ok(Selector::default());
    }
    loop {
        exprs.push(p.requirement()?);
        p.skip_ws();
        if p.at_end() {
            break;
        }
        p.expect(",")?;
    }
    Ok(exprs.into_iter().collect())
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

/// Characters allowed in label keys (`prefix/name`) and values.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

impl<'a> Parser<'a> {
    fn err(&self, pos: usize, reason: impl Into<String>) -> SelectorError {
        SelectorError {
            selector: self.src.to_owned(),
            pos,
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    /// Skip what the real lexer (`labels/selector.go` `isWhitespace`) calls whitespace: space,
    /// tab, CR and LF only, so that a selector the server refuses (a vertical tab, found by
    /// fuzz/ selector) is refused here too.
    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches([' ', '\t', '\r', '\n']).len();
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &str) -> Result<(), SelectorError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.err(self.pos, format!("expected '{tok}'")))
        }
    }

    /// A run of key/value characters, possibly empty.
    fn word(&mut self) -> &'a str {
        self.skip_ws();
        let rest = self.rest();
        let len = rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        let key = self.word();
        if key.is_empty() {
            return Err(self.err(start, "expected a label key"));
        }
        validate_key(key).map_err(|r| self.err(start, r))?;
        Ok(key.to_owned())
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        let value = self.word();
        validate_value(value).map_err(|r| self.err(start, r))?;
        Ok(value.to_owned())
    }

    fn requirement(&mut self) -> Result<Expression, SelectorError> {
        if self.eat("!") {
            return Ok(Expression::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        self.skip_ws();
        let op_pos = self.pos;
        if self.at_end() || self.rest().starts_with(',') {
            return Ok(Expression::Exists(key));
        }
        if self.eat("!=") {
            return Ok(Expression::NotEqual(key, self.value()?));
        }
        if self.eat("==") || self.eat("=") {
            return Ok(Expression::Equal(key, self.value()?));
        }
        if self.rest().starts_with('<') || self.rest().starts_with('>') {
            return Err(self.err(op_pos, "the '<' and '>' operators are not supported"));
        }
        match self.word() {
            "in" => Ok(Expression::In(key, self.set()?)),
            "notin" => Ok(Expression::NotIn(key, self.set()?)),
            _ => Err(self.err(
                op_pos,
                "expected one of '=', '==', '!=', 'in', 'notin', ',' or the end",
            )),
        }
    }

    /// `( v1, v2, ... )`, parsed by the same state machine as apimachinery's
    /// `parseIdentifiersList`, so that the server accepts every set this accepts: a leading
    /// or trailing comma means the empty value, and a comma after a comma is taken with it as
    /// one more empty value. Hence `(a,,b)` and `(a,,,)` parse while `(a,,)` and `()` do not
    /// (found by fuzz/ selector). Like `parseValues`, `()` is the set of the empty value.
    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.expect("(")?;
        let mut values = BTreeSet::new();
        if self.eat(")") {
            values.insert(String::new());
            return Ok(values);
        }
        loop {
            if self.eat(",") {
                if values.is_empty() {
                    values.insert(String::new());
                }
                if self.eat(")") {
                    values.insert(String::new());
                    return Ok(values);
                }
                if self.eat(",") {
                    values.insert(String::new());
                }
                continue;
            }
            self.skip_ws();
            let start = self.pos;
            let value = self.word();
            if value.is_empty() {
                return Err(self.err(start, "expected ',' or a value"));
            }
            validate_value(value).map_err(|r| self.err(start, r))?;
            values.insert(value.to_owned());
            self.skip_ws();
            if self.rest().starts_with(',') {
                continue;
            }
            if self.eat(")") {
                return Ok(values);
            }
            return Err(self.err(self.pos, "expected ',' or ')'"));
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters that starts and ends alphanumeric.
fn validate_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err("a label key prefix must be a DNS subdomain (lowercase letters, digits, '-', '.')");
        }
    }
    if name.is_empty() || name.len() > 63 || name.contains('/') || !alnum_ends(name) {
        return Err(
            "a label key name must be 1-63 characters of letters, digits, '-', '_', '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters starting and ending alphanumeric.
fn validate_value(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 || value.contains('/') || !alnum_ends(value) {
        return Err(
            "a label value must be at most 63 characters of letters, digits, '-', '_', '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

fn alnum_ends(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric) && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

//! Authorization as the real kube-apiserver's RBAC authorizer does it (plugin/pkg/auth/
//! authorizer/rbac): Roles, ClusterRoles (with `aggregationRule`, filled as the
//! clusterrole-aggregation controller fills them), RoleBindings and ClusterRoleBindings, the
//! privileged `system:masters` group, the default policy the real server bootstraps, RBAC
//! escalation prevention, the 403 wording, and the access reviews (SubjectAccessReview and
//! friends) that `kubectl auth can-i` uses.
//!
//! The authorizer never scans the store per request: it keeps an [`Index`] of roles and
//! bindings by subject, rebuilt (from the RBAC objects only) when a change to one of them has
//! been committed. It learns of changes from the store's event channel, drained at the start
//! of every decision, so a request that follows an acknowledged RBAC write sees it; a
//! subscriber that fell behind rebuilds once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::broadcast::error::TryRecvError;

use crate::authn::UserInfo;
use crate::registry::GroupResource;
use crate::selector::{LabelSelector, labels_of};
use crate::status::ApiError;
use crate::store::{Store, Subscription, rv_of};

/// The RBAC API group.
pub const GROUP: &str = "rbac.authorization.k8s.io";
/// How many aggregation passes are made at most (aggregated roles that select aggregated
/// roles settle in as many passes as the chain is long).
const MAX_AGGREGATION_PASSES: usize = 16;

fn gr(resource: &str) -> GroupResource {
    GroupResource {
        group: GROUP.into(),
        resource: resource.into(),
    }
}

/// A string quoted as Go's `%q` quotes it (ASCII cases).
pub fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A list quoted as Go's `%q` formats a `[]string`: `["a" "b"]`.
fn go_quote_list(v: &[String]) -> String {
    let parts: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", parts.join(" "))
}

/// One `PolicyRule`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Verbs.
    pub verbs: Vec<String>,
    /// API groups.
    pub api_groups: Vec<String>,
    /// Resources (`pods`, `pods/status`, `*`, `*/status`).
    pub resources: Vec<String>,
    /// Resource names (empty: all).
    pub resource_names: Vec<String>,
    /// Non-resource URLs.
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

impl Rule {
    /// A rule from its JSON form.
    pub fn from_json(v: &Value) -> Self {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// The rule's JSON form (empty lists left out, as `omitempty`).
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("verbs", &self.verbs),
            ("apiGroups", &self.api_groups),
            ("resources", &self.resources),
            ("resourceNames", &self.resource_names),
            ("nonResourceURLs", &self.non_resource_urls),
        ] {
            if !v.is_empty() || k == "verbs" {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }

    fn new(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: s(verbs),
            api_groups: s(groups),
            resources: s(resources),
            ..Default::default()
        }
    }

    fn urls(verbs: &[&str], urls: &[&str]) -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: s(verbs),
            non_resource_urls: s(urls),
            ..Default::default()
        }
    }

    /// `rbacv1helpers.CompactString`, as escalation errors list missing rules.
    pub fn compact_string(&self) -> String {
        let mut parts = vec![];
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", go_quote_list(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", go_quote_list(&self.resources)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!(
                "NonResourceURLs:{}",
                go_quote_list(&self.non_resource_urls)
            ));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:{}", go_quote_list(&self.resource_names)));
        }
        if !self.verbs.is_empty() {
            parts.push(format!("Verbs:{}", go_quote_list(&self.verbs)));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

fn has(list: &[String], s: &str) -> bool {
    list.iter().any(|x| x == s)
}

fn verb_matches(rule: &Rule, verb: &str) -> bool {
    has(&rule.verbs, "*") || has(&rule.verbs, verb)
}

fn group_matches(rule: &Rule, group: &str) -> bool {
    has(&rule.api_groups, "*") || has(&rule.api_groups, group)
}

/// `rbacv1helpers.ResourceMatches`: `*`, the exact `resource/subresource`, or `*/subresource`.
fn resource_matches(rule: &Rule, combined: &str, sub: &str) -> bool {
    rule.resources.iter().any(|r| {
        r == "*"
            || r == combined
            || (!sub.is_empty() && r.len() == sub.len() + 2 && r.starts_with("*/") && r.ends_with(sub))
    })
}

fn name_matches(rule: &Rule, name: &str) -> bool {
    rule.resource_names.is_empty() || has(&rule.resource_names, name)
}

fn url_matches(rule: &Rule, path: &str) -> bool {
    rule.non_resource_urls
        .iter()
        .any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*'))))
}

/// What a request asks to do: `authorizer.Attributes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// Who asks.
    pub user: UserInfo,
    /// The verb (`get`, `list`, `watch`, `create`, ..., or the lowercased HTTP method of a
    /// non-resource request).
    pub verb: String,
    /// Whether it is a resource request (else `path` applies).
    pub resource_request: bool,
    /// The URL path of a non-resource request.
    pub path: String,
    /// Namespace.
    pub namespace: String,
    /// API group.
    pub api_group: String,
    /// API version.
    pub api_version: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Object name.
    pub name: String,
}

impl Attributes {
    /// A resource request.
    pub fn resource(
        user: &UserInfo,
        verb: &str,
        group: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Attributes {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            namespace: namespace.into(),
            api_group: group.into(),
            resource: resource.into(),
            name: name.into(),
            ..Default::default()
        }
    }
}

/// `RuleAllows`.
pub fn rule_allows(a: &Attributes, rule: &Rule) -> bool {
    if a.resource_request {
        let combined = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        verb_matches(rule, &a.verb)
            && group_matches(rule, &a.api_group)
            && resource_matches(rule, &combined, &a.subresource)
            && name_matches(rule, &a.name)
    } else {
        verb_matches(rule, &a.verb) && url_matches(rule, &a.path)
    }
}

/// The 403 the real server answers a denied request with (`responsewriters.Forbidden`), with
/// the authorizer's reason appended when there is one.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    let user = go_quote(&a.user.name);
    let why = if !a.resource_request {
        format!("User {user} cannot {} path {}", a.verb, go_quote(&a.path))
    } else {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {}", go_quote(&a.namespace))
        };
        format!(
            "User {user} cannot {} resource {} in API group {} {scope}",
            a.verb,
            go_quote(&resource),
            go_quote(&a.api_group)
        )
    };
    let why = if reason.is_empty() {
        why
    } else {
        format!("{why}: {reason}")
    };
    forbidden_error(&a.api_group, &a.resource, &a.name, &why)
}

/// `apierrors.NewForbidden(groupResource, name, err)`.
pub fn forbidden_error(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
    let message = if resource.is_empty() {
        format!("forbidden: {why}")
    } else {
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        if name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {} is forbidden: {why}", go_quote(name))
        }
    };
    let mut details = serde_json::Map::new();
    if !name.is_empty() {
        details.insert("name".into(), json!(name));
    }
    if !group.is_empty() {
        details.insert("group".into(), json!(group));
    }
    if !resource.is_empty() {
        details.insert("kind".into(), json!(resource));
    }
    ApiError::forbidden(message).with_details(Value::Object(details))
}

/// One subject of a binding.
#[derive(Debug, Clone)]
struct Subject {
    kind: String,
    name: String,
    namespace: String,
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone)]
struct Binding {
    name: String,
    /// Empty for a ClusterRoleBinding.
    namespace: String,
    role_kind: String,
    role_name: String,
    subjects: Vec<Subject>,
}

impl Binding {
    fn from_json(v: &Value) -> Self {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let subjects = v
            .get("subjects")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| Subject {
                        kind: x.get("kind").and_then(Value::as_str).unwrap_or_default().into(),
                        name: x.get("name").and_then(Value::as_str).unwrap_or_default().into(),
                        namespace: x
                            .get("namespace")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Binding {
            name: s("/metadata/name"),
            namespace: s("/metadata/namespace"),
            role_kind: s("/roleRef/kind"),
            role_name: s("/roleRef/name"),
            subjects,
        }
    }

    /// The key the subject is indexed under (a ServiceAccount as its user name).
    fn subject_key(&self, s: &Subject) -> Option<String> {
        match s.kind.as_str() {
            "User" => Some(format!("u:{}", s.name)),
            "Group" => Some(format!("g:{}", s.name)),
            "ServiceAccount" => {
                let ns = if s.namespace.is_empty() {
                    &self.namespace
                } else {
                    &s.namespace
                };
                (!ns.is_empty()).then(|| format!("u:{}{ns}:{}", crate::authn::SA_PREFIX, s.name))
            }
            _ => None,
        }
    }

    /// `appliesTo`: the first subject that applies to the user.
    fn applies_to(&self, user: &UserInfo) -> Option<&Subject> {
        let user_key = format!("u:{}", user.name);
        self.subjects.iter().find(|s| match self.subject_key(s) {
            Some(k) if k.starts_with("g:") => user.groups.iter().any(|g| k[2..] == **g),
            Some(k) => k == user_key,
            None => false,
        })
    }

    /// `describeSubject`.
    fn describe_subject(&self, s: &Subject) -> String {
        match s.kind.as_str() {
            "ServiceAccount" => {
                let ns = if s.namespace.is_empty() {
                    &self.namespace
                } else {
                    &s.namespace
                };
                format!("{} {}", s.kind, go_quote(&format!("{}/{ns}", s.name)))
            }
            _ => format!("{} {}", s.kind, go_quote(&s.name)),
        }
    }

    /// The binding as the RBAC authorizer's reasons name it.
    fn describe(&self, s: &Subject) -> String {
        if self.namespace.is_empty() {
            format!(
                "ClusterRoleBinding {} of {} {} to {}",
                go_quote(&self.name),
                self.role_kind,
                go_quote(&self.role_name),
                self.describe_subject(s)
            )
        } else {
            format!(
                "RoleBinding {} of {} {} to {}",
                go_quote(&format!("{}/{}", self.name, self.namespace)),
                self.role_kind,
                go_quote(&self.role_name),
                self.describe_subject(s)
            )
        }
    }
}

/// Bindings of one scope by name, with their subjects indexed.
#[derive(Debug, Default, Clone)]
struct Bindings {
    by_name: BTreeMap<String, Binding>,
    by_subject: HashMap<String, BTreeSet<String>>,
}

impl Bindings {
    fn keys(b: &Binding) -> BTreeSet<String> {
        b.subjects.iter().filter_map(|s| b.subject_key(s)).collect()
    }

    fn insert(&mut self, b: Binding) {
        self.remove(&b.name.clone());
        for k in Self::keys(&b) {
            self.by_subject.entry(k).or_default().insert(b.name.clone());
        }
        self.by_name.insert(b.name.clone(), b);
    }

    fn remove(&mut self, name: &str) {
        let Some(old) = self.by_name.remove(name) else {
            return;
        };
        for k in Self::keys(&old) {
            if let Some(set) = self.by_subject.get_mut(&k) {
                set.remove(name);
                if set.is_empty() {
                    self.by_subject.remove(&k);
                }
            }
        }
    }

    /// The bindings that may apply to the user, in name order.
    fn for_user(&self, user: &UserInfo) -> Vec<&Binding> {
        let mut names: BTreeSet<&String> = BTreeSet::new();
        if let Some(v) = self.by_subject.get(&format!("u:{}", user.name)) {
            names.extend(v);
        }
        for g in &user.groups {
            if let Some(v) = self.by_subject.get(&format!("g:{g}")) {
                names.extend(v);
            }
        }
        names.into_iter().filter_map(|n| self.by_name.get(n)).collect()
    }
}

/// Roles and bindings, indexed for decisions.
#[derive(Debug, Default, Clone)]
pub struct Index {
    cluster_roles: HashMap<String, Arc<Vec<Rule>>>,
    roles: HashMap<(String, String), Arc<Vec<Rule>>>,
    cluster_bindings: Bindings,
    bindings: HashMap<String, Bindings>,
}

/// A ClusterRole as the aggregation needs it.
struct ClusterRoleView {
    labels: BTreeMap<String, String>,
    selectors: Option<Vec<LabelSelector>>,
    rules: Vec<Rule>,
}

fn rules_of(v: &Value) -> Vec<Rule> {
    v.get("rules")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(Rule::from_json).collect())
        .unwrap_or_default()
}

/// The rules each aggregated ClusterRole should hold, as the clusterrole-aggregation
/// controller computes them: the rules of every other ClusterRole any selector matches, in
/// name order, without duplicates. Chains (an aggregated role selected by another) settle
/// over several passes as they do on a real cluster. Returns only roles whose rules change.
fn aggregate(roles: &mut BTreeMap<String, ClusterRoleView>) -> BTreeMap<String, Vec<Rule>> {
    let mut changed = BTreeMap::new();
    for _ in 0..MAX_AGGREGATION_PASSES {
        let mut any = false;
        let names: Vec<String> = roles
            .iter()
            .filter(|(_, r)| r.selectors.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(selectors) = roles.get(&name).and_then(|r| r.selectors.clone()) else {
                continue;
            };
            let mut new: Vec<Rule> = vec![];
            for sel in &selectors {
                for (other, view) in roles.iter() {
                    // An empty selector matches every role, as `LabelSelectorAsSelector`.
                    if *other == name || !sel.matches(&view.labels) {
                        continue;
                    }
                    for r in &view.rules {
                        if !new.contains(r) {
                            new.push(r.clone());
                        }
                    }
                }
            }
            if let Some(view) = roles.get_mut(&name)
                && view.rules != new
            {
                view.rules = new.clone();
                changed.insert(name, new);
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    changed
}

impl Index {
    /// Build from the stored RBAC objects, with aggregated ClusterRoles resolved. Also returns
    /// the aggregated ClusterRoles whose stored rules are out of date.
    fn build(store: &Store) -> (Self, BTreeMap<String, Vec<Rule>>) {
        let mut idx = Index::default();
        let changed = idx.build_cluster_roles(store);
        let (roles, _) = store.list(&gr("roles"), None);
        for r in &roles {
            idx.apply("roles", r, false);
        }
        for resource in ["clusterrolebindings", "rolebindings"] {
            let (bindings, _) = store.list(&gr(resource), None);
            for b in &bindings {
                idx.apply(resource, b, false);
            }
        }
        (idx, changed)
    }

    /// Apply one stored change of a Role or binding (`deleted`: the object is gone).
    fn apply(&mut self, resource: &str, obj: &Value, deleted: bool) {
        match resource {
            "roles" => {
                let key = crate::store::key_of(obj);
                if deleted {
                    self.roles.remove(&key);
                } else {
                    self.roles.insert(key, Arc::new(rules_of(obj)));
                }
            }
            "clusterrolebindings" => {
                let mut b = Binding::from_json(obj);
                b.namespace.clear();
                if deleted {
                    self.cluster_bindings.remove(&b.name);
                } else {
                    self.cluster_bindings.insert(b);
                }
            }
            "rolebindings" => {
                let b = Binding::from_json(obj);
                if deleted {
                    if let Some(scope) = self.bindings.get_mut(&b.namespace) {
                        scope.remove(&b.name);
                        if scope.by_name.is_empty() {
                            self.bindings.remove(&b.namespace);
                        }
                    }
                } else {
                    self.bindings.entry(b.namespace.clone()).or_default().insert(b);
                }
            }
            _ => {}
        }
    }

    /// Rebuild the ClusterRoles (few: the aggregation needs them all together); returns the
    /// aggregated ones whose stored rules are out of date.
    fn build_cluster_roles(&mut self, store: &Store) -> BTreeMap<String, Vec<Rule>> {
        let (crs, _) = store.list(&gr("clusterroles"), None);
        let mut views: BTreeMap<String, ClusterRoleView> = BTreeMap::new();
        for cr in &crs {
            let name = cr
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let selectors = cr
                .pointer("/aggregationRule/clusterRoleSelectors")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| LabelSelector::from_object(s).ok())
                        .collect()
                });
            views.insert(
                name,
                ClusterRoleView {
                    labels: labels_of(cr),
                    selectors,
                    rules: rules_of(cr),
                },
            );
        }
        let changed = aggregate(&mut views);
        self.cluster_roles = views
            .into_iter()
            .map(|(name, v)| (name, Arc::new(v.rules)))
            .collect();
        changed
    }

    fn role_rules(&self, b: &Binding) -> Result<Arc<Vec<Rule>>, String> {
        match b.role_kind.as_str() {
            "ClusterRole" => self
                .cluster_roles
                .get(&b.role_name)
                .cloned()
                .ok_or_else(|| format!("clusterrole.{GROUP} {} not found", go_quote(&b.role_name))),
            "Role" if !b.namespace.is_empty() => self
                .roles
                .get(&(b.namespace.clone(), b.role_name.clone()))
                .cloned()
                .ok_or_else(|| format!("role.{GROUP} {} not found", go_quote(&b.role_name))),
            other => Err(format!("unsupported role reference kind: {}", go_quote(other))),
        }
    }

    /// `VisitRulesFor`: every rule that applies to the user in the namespace (cluster-wide
    /// bindings first), with its source; `visit` returns false to stop. Errors (a binding
    /// to a missing role) are collected.
    fn visit(
        &self,
        user: &UserInfo,
        namespace: &str,
        errors: &mut Vec<String>,
        mut visit: impl FnMut(&dyn Fn() -> String, &Rule) -> bool,
    ) {
        let mut scopes = vec![&self.cluster_bindings];
        if !namespace.is_empty()
            && let Some(b) = self.bindings.get(namespace)
        {
            scopes.push(b);
        }
        for scope in scopes {
            for b in scope.for_user(user) {
                let Some(subject) = b.applies_to(user) else {
                    continue;
                };
                let rules = match self.role_rules(b) {
                    Ok(r) => r,
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                };
                let describe = || b.describe(subject);
                for r in rules.iter() {
                    if !visit(&describe, r) {
                        return;
                    }
                }
            }
        }
    }

    /// `RulesFor`: the rules the user holds in the namespace (cluster-wide ones included).
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let mut rules = vec![];
        let mut errors = vec![];
        self.visit(user, namespace, &mut errors, |_, r| {
            rules.push(r.clone());
            true
        });
        (rules, errors)
    }

    /// The RBAC decision: `(allowed, reason)`.
    pub fn authorize(&self, a: &Attributes) -> (bool, String) {
        let mut reason = None;
        let mut errors = vec![];
        self.visit(&a.user, &a.namespace, &mut errors, |describe, r| {
            if rule_allows(a, r) {
                reason = Some(format!("RBAC: allowed by {}", describe()));
                return false;
            }
            true
        });
        match reason {
            Some(r) => (true, r),
            None if errors.is_empty() => (false, String::new()),
            None if errors.len() == 1 => (false, format!("RBAC: {}", errors[0])),
            None => (false, format!("RBAC: [{}]", errors.join(", "))),
        }
    }
}

/// The authorizer: `system:masters` first, then RBAC over the index.
pub struct Authorizer {
    store: Arc<Store>,
    state: Mutex<IndexState>,
}

struct IndexState {
    rx: Subscription,
    index: Arc<Index>,
    /// Rebuild everything (at first, and after the subscription fell behind).
    dirty: bool,
}

fn is_rbac_change(gr: &GroupResource) -> bool {
    gr.group == GROUP
}

impl Authorizer {
    /// An authorizer over the store's RBAC objects (built at the first decision).
    pub fn new(store: Arc<Store>) -> Self {
        let rx = store.subscribe();
        Authorizer {
            store,
            state: Mutex::new(IndexState {
                rx,
                index: Arc::new(Index::default()),
                dirty: true,
            }),
        }
    }

    /// The index, brought up to date with the RBAC changes committed since: Roles and
    /// bindings are updated one by one (a bulk load costs O(objects), not O(objects²)),
    /// ClusterRoles are recomputed together (aggregation), and aggregated ClusterRoles whose
    /// stored rules are out of date are written.
    pub fn index(&self) -> Arc<Index> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut changes = vec![];
        loop {
            match st.rx.try_recv() {
                Ok(ev) => {
                    if is_rbac_change(&ev.gr) && !st.dirty {
                        changes.push(ev);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_)) => st.dirty = true,
                Err(TryRecvError::Closed) => {
                    st.dirty = true;
                    break;
                }
            }
        }
        if st.dirty {
            let (index, changed) = Index::build(&self.store);
            st.index = Arc::new(index);
            st.dirty = false;
            self.write_aggregated(changed);
        } else if !changes.is_empty() {
            // Copied only if a decision still holds the previous index.
            let index = Arc::make_mut(&mut st.index);
            let mut cluster_roles = false;
            for ev in changes {
                let deleted = ev.kind == crate::store::EventType::Deleted;
                match ev.gr.resource.as_str() {
                    "clusterroles" => cluster_roles = true,
                    resource => index.apply(resource, &ev.object.value(), deleted),
                }
            }
            if cluster_roles {
                let changed = index.build_cluster_roles(&self.store);
                self.write_aggregated(changed);
            }
        }
        st.index.clone()
    }

    /// Store the rules of aggregated ClusterRoles, as the aggregation controller does (a
    /// write that loses a race is retried at the next change).
    fn write_aggregated(&self, changed: BTreeMap<String, Vec<Rule>>) {
        let gr = gr("clusterroles");
        for (name, rules) in changed {
            let Some(cur) = self.store.get(&gr, &(String::new(), name.clone())) else {
                continue;
            };
            let mut obj = (*cur).clone();
            obj["rules"] = Value::Array(rules.iter().map(Rule::to_json).collect());
            if let Err(e) = self.store.update(&gr, obj, rv_of(&cur)) {
                tracing::debug!(clusterrole = %name, error = ?e, "aggregating rules lost a race; retried at the next change");
            }
        }
    }

    /// The decision for a request: `(allowed, reason)`.
    pub fn authorize(&self, a: &Attributes) -> (bool, String) {
        // Brought up to date for every request, the admin's too: the aggregated roles it reads
        // next are then written.
        let index = self.index();
        // The privileged-groups authorizer runs first and gives no reason.
        if a.user.is_master() {
            return (true, String::new());
        }
        index.authorize(a)
    }

    /// The rules the user holds in a namespace.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        self.index().rules_for(user, namespace)
    }

    /// Escalation prevention for writes of RBAC objects (`obj` is the object as it would be
    /// stored): a Role or ClusterRole may only hold rules its writer holds (or the writer may
    /// `escalate` it); a binding may only refer to a role whose rules its writer holds (or the
    /// writer may `bind` it). `system:masters` may do anything.
    pub fn check_escalation(&self, user: &UserInfo, resource: &str, obj: &Value) -> Result<(), ApiError> {
        if user.is_master() {
            return Ok(());
        }
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let namespace = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let index = self.index();
        match resource {
            "roles" | "clusterroles" => {
                let escalate = Attributes::resource(user, "escalate", GROUP, resource, namespace, name);
                if self.authorize(&escalate).0 {
                    return Ok(());
                }
                let rules = rules_of(obj);
                confirm_no_escalation(&index, user, namespace, &rules)
                    .map_err(|why| forbidden_error(GROUP, resource, name, &why))?;
                if resource == "clusterroles" && obj.get("aggregationRule").is_some_and(|v| !v.is_null()) {
                    let full = vec![Rule::new(&["*"], &["*"], &["*"]), Rule::urls(&["*"], &["*"])];
                    confirm_no_escalation(&index, user, namespace, &full).map_err(|_| {
                        forbidden_error(
                            GROUP,
                            resource,
                            name,
                            "must have cluster-admin privileges to use the aggregationRule",
                        )
                    })?;
                }
                Ok(())
            }
            "rolebindings" | "clusterrolebindings" => {
                let b = Binding::from_json(obj);
                let role_resource = if b.role_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                let bind = Attributes::resource(user, "bind", GROUP, role_resource, namespace, &b.role_name);
                if self.authorize(&bind).0 {
                    return Ok(());
                }
                let mut b = b;
                if resource == "clusterrolebindings" {
                    b.namespace.clear();
                }
                let rules = index.role_rules(&b).map_err(ApiError::bad_request)?;
                confirm_no_escalation(&index, user, namespace, &rules)
                    .map_err(|why| forbidden_error(GROUP, resource, name, &why))
            }
            _ => Ok(()),
        }
    }
}

/// Keep aggregated ClusterRoles up to date when no request comes (the aggregation
/// controller's loop): every committed RBAC change brings the index, and so the stored
/// aggregated rules, up to date.
pub(crate) fn spawn_aggregation(
    authz: Arc<Authorizer>,
    store: Arc<Store>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut rx = store.subscribe();
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => return,
                ev = rx.recv() => ev,
            };
            match ev {
                Ok(ev) if !is_rbac_change(&ev.gr) => continue,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let _ = authz.index();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Create the default ClusterRoles and ClusterRoleBindings that are missing, as the real
/// server's bootstrap-roles post-start hook does (existing ones, changed or not, are kept).
pub(crate) async fn bootstrap(api: &crate::api::Api) -> Result<(), String> {
    let objects = default_cluster_roles()
        .into_iter()
        .chain(default_cluster_role_bindings());
    let registry = api.registry();
    for obj in objects {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let Some(def) = registry.by_kind("rbac.authorization.k8s.io/v1", kind) else {
            // RBAC kinds not served: nothing to bootstrap.
            return Ok(());
        };
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        if api
            .store
            .get(&def.key(), &(String::new(), name.clone()))
            .is_some()
        {
            continue;
        }
        let ctx = crate::api::Ctx {
            def,
            namespace: String::new(),
            name: String::new(),
            sub: String::new(),
            params: crate::api::Params::default(),
            user_agent: "crwatch-apiserver".into(),
            user: "system:apiserver".into(),
        };
        match api.create(&ctx, obj.to_string().as_bytes()).await {
            Ok(_) => {}
            // Created meanwhile: fine.
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(format!("bootstrapping {kind} {name}: {}", e.message)),
        }
    }
    Ok(())
}

/// A rule broken down into rules of one verb, group, resource and name (`BreakdownRule`).
fn breakdown(rule: &Rule) -> Vec<Rule> {
    let mut out = vec![];
    for g in &rule.api_groups {
        for r in &rule.resources {
            if rule.resource_names.is_empty() {
                for v in &rule.verbs {
                    out.push(Rule {
                        verbs: vec![v.clone()],
                        api_groups: vec![g.clone()],
                        resources: vec![r.clone()],
                        ..Default::default()
                    });
                }
            } else {
                for n in &rule.resource_names {
                    for v in &rule.verbs {
                        out.push(Rule {
                            verbs: vec![v.clone()],
                            api_groups: vec![g.clone()],
                            resources: vec![r.clone()],
                            resource_names: vec![n.clone()],
                            ..Default::default()
                        });
                    }
                }
            }
        }
    }
    for u in &rule.non_resource_urls {
        for v in &rule.verbs {
            out.push(Rule {
                verbs: vec![v.clone()],
                non_resource_urls: vec![u.clone()],
                ..Default::default()
            });
        }
    }
    out
}

/// `ruleCovers`: whether the owner's rule covers a broken-down rule.
fn rule_covers(owner: &Rule, sub: &Rule) -> bool {
    let verbs = has(&owner.verbs, "*") || sub.verbs.iter().all(|v| has(&owner.verbs, v));
    let groups = has(&owner.api_groups, "*") || sub.api_groups.iter().all(|g| has(&owner.api_groups, g));
    let resources = has(&owner.resources, "*")
        || sub.resources.iter().all(|r| {
            has(&owner.resources, r)
                || r.split_once('/')
                    .is_some_and(|(_, s)| has(&owner.resources, &format!("*/{s}")))
        });
    let urls = sub.non_resource_urls.iter().all(|u| {
        owner
            .non_resource_urls
            .iter()
            .any(|o| o == "*" || o == u || (o.ends_with('*') && u.starts_with(o.trim_end_matches('*'))))
    });
    let names = owner.resource_names.is_empty()
        || (!sub.resource_names.is_empty()
            && sub.resource_names.iter().all(|n| has(&owner.resource_names, n)));
    verbs && groups && resources && urls && names
}

/// `CompactRules`: broken-down resource rules that differ only in their verb are merged.
fn compact(rules: Vec<Rule>) -> Vec<Rule> {
    let mut out: Vec<Rule> = vec![];
    let mut at: HashMap<(String, String, Option<String>), usize> = HashMap::new();
    for r in rules {
        if r.api_groups.len() == 1
            && r.resources.len() == 1
            && r.resource_names.len() <= 1
            && r.non_resource_urls.is_empty()
        {
            let key = (
                r.api_groups[0].clone(),
                r.resources[0].clone(),
                r.resource_names.first().cloned(),
            );
            if let Some(&i) = at.get(&key) {
                for v in r.verbs {
                    if !out[i].verbs.contains(&v) {
                        out[i].verbs.push(v);
                    }
                }
                continue;
            }
            at.insert(key, out.len());
        }
        out.push(r);
    }
    out
}

/// `ConfirmNoEscalation`: Err(the real message) when the user does not hold every rule.
fn confirm_no_escalation(
    index: &Index,
    user: &UserInfo,
    namespace: &str,
    rules: &[Rule],
) -> Result<(), String> {
    let (owned, errors) = index.rules_for(user, namespace);
    let missing: Vec<Rule> = rules
        .iter()
        .flat_map(breakdown)
        .filter(|sub| !owned.iter().any(|o| rule_covers(o, sub)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let described: BTreeSet<String> = compact(missing).iter().map(Rule::compact_string).collect();
    let mut msg = format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        go_quote(&user.name),
        go_quote_list(&user.groups),
        described.into_iter().collect::<Vec<_>>().join("\n")
    );
    if !errors.is_empty() {
        msg.push_str(&format!("; resolution errors: [{}]", errors.join(", ")));
    }
    Err(msg)
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const READ_WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

fn cluster_role(name: &str, labels: Value, aggregate_to: Option<&str>, rules: Vec<Rule>) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/bootstrapping"] = json!("rbac-defaults");
    let mut v = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "rules": rules.iter().map(Rule::to_json).collect::<Vec<_>>(),
    });
    if let Some(a) = aggregate_to {
        v["aggregationRule"] = json!({"clusterRoleSelectors": [
            {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{a}"): "true"}}
        ]});
    }
    v
}

fn cluster_binding(name: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"apiGroup": GROUP, "kind": "Group", "name": g}))
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
        },
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": name},
        "subjects": subjects,
    })
}

/// The ClusterRoles the real server bootstraps that clients rely on (bootstrappolicy/
/// policy.go of the version served), in its order.
pub fn default_cluster_roles() -> Vec<Value> {
    let agg = |to: &str| json!({format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"});
    let none = json!({});
    vec![
        cluster_role(
            "cluster-admin",
            none.clone(),
            None,
            vec![Rule::new(&["*"], &["*"], &["*"]), Rule::urls(&["*"], &["*"])],
        ),
        cluster_role(
            "system:discovery",
            none.clone(),
            None,
            vec![Rule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:basic-user",
            none.clone(),
            None,
            vec![
                Rule::new(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                Rule::new(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        cluster_role(
            "system:public-info-viewer",
            none.clone(),
            None,
            vec![Rule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        cluster_role("admin", none.clone(), Some("admin"), vec![]),
        cluster_role("edit", agg("admin"), Some("edit"), vec![]),
        cluster_role("view", agg("edit"), Some("view"), vec![]),
        cluster_role(
            "system:aggregate-to-admin",
            agg("admin"),
            None,
            vec![
                Rule::new(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                Rule::new(READ_WRITE, &[GROUP], &["rolebindings", "roles"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            agg("edit"),
            None,
            vec![
                Rule::new(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                Rule::new(&["impersonate"], &[""], &["serviceaccounts"]),
                Rule::new(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                Rule::new(&["create"], &[""], &["pods/eviction"]),
                Rule::new(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                Rule::new(&["create"], &[""], &["serviceaccounts/token"]),
                Rule::new(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                Rule::new(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                Rule::new(WRITE, &["batch"], &["cronjobs", "jobs"]),
                Rule::new(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                Rule::new(WRITE, &["policy"], &["poddisruptionbudgets"]),
                Rule::new(WRITE, &["networking.k8s.io"], &["ingresses", "networkpolicies"]),
                Rule::new(WRITE, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:aggregate-to-view",
            agg("view"),
            None,
            vec![
                Rule::new(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                Rule::new(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                Rule::new(READ, &[""], &["namespaces"]),
                Rule::new(READ, &["discovery.k8s.io"], &["endpointslices"]),
                Rule::new(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                Rule::new(
                    READ,
                    &["autoscaling"],
                    &["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
                ),
                Rule::new(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                Rule::new(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                Rule::new(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                Rule::new(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
                Rule::new(READ, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            none.clone(),
            None,
            vec![Rule::urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        cluster_role(
            "system:auth-delegator",
            none,
            None,
            vec![
                Rule::new(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                Rule::new(&["create"], &["authorization.k8s.io"], &["subjectaccessreviews"]),
            ],
        ),
    ]
}

/// The ClusterRoleBindings the real server bootstraps for those roles.
pub fn default_cluster_role_bindings() -> Vec<Value> {
    vec![
        cluster_binding("cluster-admin", &[crate::authn::SYSTEM_MASTERS]),
        cluster_binding("system:discovery", &[crate::authn::ALL_AUTHENTICATED]),
        cluster_binding("system:basic-user", &[crate::authn::ALL_AUTHENTICATED]),
        cluster_binding(
            "system:service-account-issuer-discovery",
            &["system:serviceaccounts"],
        ),
        cluster_binding(
            "system:public-info-viewer",
            &[crate::authn::ALL_AUTHENTICATED, crate::authn::ALL_UNAUTHENTICATED],
        ),
    ]
}

/// Why `name` is not a valid RBAC object name (`path.IsValidPathSegmentName`, as
/// `ValidateRBACName`), if it is not.
pub fn name_problems(name: &str) -> Vec<crate::status::Cause> {
    let invalid = |detail: &str| {
        crate::status::Cause::new(
            "FieldValueInvalid",
            "metadata.name",
            format!("Invalid value: {}: {detail}", go_quote(name)),
        )
    };
    let mut out = vec![];
    match name {
        "." => out.push(invalid("may not be '.'")),
        ".." => out.push(invalid("may not be '..'")),
        _ => {
            if name.contains('/') {
                out.push(invalid("may not contain '/'"));
            }
            if name.contains('%') {
                out.push(invalid("may not contain '%'"));
            }
        }
    }
    out
}

/// Whether a resource is one whose writes escalation prevention guards.
pub fn is_guarded(group: &str, resource: &str) -> bool {
    group == GROUP
        && matches!(
            resource,
            "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings"
        )
}

/// Go's `strconv.ParseBool` truths, as the parameter codec reads `watch`.
fn go_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// The name a field selector pins (`metadata.name=x` or `==x` among its terms), as
/// `RequiresExactMatch("metadata.name")`.
fn selector_name(selector: &str) -> Option<&str> {
    selector.split(',').find_map(|term| {
        let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
        (k.trim() == "metadata.name" && !k.ends_with('!')).then(|| v.trim())
    })
}

/// The attributes of a request as the real server's `RequestInfoFactory` derives them from
/// the method, the (decoded) path and the query.
pub fn request_attributes(
    user: &UserInfo,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
) -> Attributes {
    let non_resource = || Attributes {
        user: user.clone(),
        verb: method.to_ascii_lowercase(),
        path: if path.is_empty() { "/".into() } else { path.into() },
        ..Default::default()
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    if parts.len() < 3 || !matches!(parts[0], "api" | "apis") {
        return non_resource();
    }
    let mut cur = &parts[1..];
    let mut a = Attributes {
        user: user.clone(),
        resource_request: true,
        ..Default::default()
    };
    if parts[0] == "apis" {
        if cur.len() < 3 {
            return non_resource();
        }
        a.api_group = cur[0].into();
        cur = &cur[1..];
    }
    a.api_version = cur[0].into();
    cur = &cur[1..];
    a.verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .into();
    if cur.first().is_some_and(|p| matches!(*p, "watch" | "proxy")) {
        if cur.len() < 2 {
            return non_resource();
        }
        a.verb = cur[0].into();
        cur = &cur[1..];
    }
    // `/namespaces/{ns}/{resource}/...`: the namespace, then the rest as a resource path
    // (`/namespaces/{ns}` and its status/finalize are the namespace itself).
    if cur.first() == Some(&"namespaces") && cur.len() > 1 {
        a.namespace = cur[1].into();
        if cur.len() > 2 && !matches!(cur[2], "finalize" | "status") {
            cur = &cur[2..];
        }
    }
    if let Some(r) = cur.first() {
        a.resource = r.to_string();
    }
    if let Some(n) = cur.get(1) {
        a.name = n.to_string();
    }
    if let Some(s) = cur.get(2) {
        a.subresource = s.to_string();
    }
    if a.name.is_empty() && a.verb == "get" {
        a.verb = if query.get("watch").is_some_and(|w| go_true(w)) {
            "watch"
        } else {
            "list"
        }
        .into();
        if let Some(n) = query.get("fieldSelector").and_then(|s| selector_name(s))
            && !n.is_empty()
            && !n.contains('/')
            && !n.contains('%')
            && n != "."
            && n != ".."
        {
            a.name = n.to_string();
        }
    }
    if a.name.is_empty() && a.verb == "delete" {
        a.verb = "deletecollection".into();
    }
    a
}

/// An `Impersonate-*` header asked for something the requester may not impersonate (403,
/// worded as the real filter's), or the headers are malformed (the real filter's 500).
#[derive(Debug)]
pub enum ImpersonationError {
    /// 403.
    Forbidden(ApiError),
    /// A plain-text 500, as `responsewriters.InternalError`.
    Malformed(String),
}

/// One thing to impersonate (`v1.ObjectReference` in the real filter).
struct ImpersonationRequest {
    kind: &'static str,
    namespace: String,
    name: String,
    api_version: &'static str,
    field_path: String,
}

impl ImpersonationRequest {
    /// `%v` of the `ObjectReference`, for the malformed-headers error.
    fn go_value(&self) -> String {
        format!(
            "{{{} {} {}  {}  {}}}",
            self.kind, self.namespace, self.name, self.api_version, self.field_path
        )
    }
}

/// `unescapeExtraKey`: percent-decoding of extra keys.
fn unescape_extra_key(k: &str) -> String {
    let mut out = Vec::with_capacity(k.len());
    let b = k.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = b.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(h).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The impersonation filter: `Ok(None)` without `Impersonate-*` headers, `Ok(Some(user))`
/// with the user to act as once every part was authorized with the `impersonate` verb.
pub fn impersonate(
    authz: &Authorizer,
    requester: &UserInfo,
    headers: &http::HeaderMap,
) -> Result<Option<UserInfo>, ImpersonationError> {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut requests = vec![];
    let requested_user = get("impersonate-user");
    let has_user = !requested_user.is_empty();
    if has_user {
        match UserInfo::service_account_of(requested_user) {
            Some((ns, name)) => requests.push(ImpersonationRequest {
                kind: "ServiceAccount",
                namespace: ns.into(),
                name: name.into(),
                api_version: "",
                field_path: String::new(),
            }),
            None => requests.push(ImpersonationRequest {
                kind: "User",
                namespace: String::new(),
                name: requested_user.into(),
                api_version: "",
                field_path: String::new(),
            }),
        }
    }
    let mut has_groups = false;
    for g in headers.get_all("impersonate-group") {
        has_groups = true;
        requests.push(ImpersonationRequest {
            kind: "Group",
            namespace: String::new(),
            name: g.to_str().unwrap_or_default().into(),
            api_version: "",
            field_path: String::new(),
        });
    }
    let mut has_extra = false;
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("impersonate-extra-") else {
            continue;
        };
        has_extra = true;
        requests.push(ImpersonationRequest {
            kind: "UserExtra",
            namespace: String::new(),
            name: value.to_str().unwrap_or_default().into(),
            api_version: "authentication.k8s.io/v1",
            field_path: unescape_extra_key(key),
        });
    }
    let requested_uid = get("impersonate-uid");
    let has_uid = !requested_uid.is_empty();
    if has_uid {
        requests.push(ImpersonationRequest {
            kind: "UID",
            namespace: String::new(),
            name: requested_uid.into(),
            api_version: "authentication.k8s.io/v1",
            field_path: String::new(),
        });
    }
    if requests.is_empty() {
        return Ok(None);
    }
    if (has_groups || has_extra || has_uid) && !has_user {
        let list: Vec<String> = requests.iter().map(ImpersonationRequest::go_value).collect();
        return Err(ImpersonationError::Malformed(format!(
            "requested [{}] without impersonating a user",
            list.join(" ")
        )));
    }
    let mut user = UserInfo::default();
    for r in &requests {
        let mut attrs = Attributes {
            user: requester.clone(),
            verb: "impersonate".into(),
            resource_request: true,
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            ..Default::default()
        };
        match r.kind {
            "ServiceAccount" => {
                attrs.resource = "serviceaccounts".into();
                user.name = format!("{}{}:{}", crate::authn::SA_PREFIX, r.namespace, r.name);
                if !has_groups {
                    user.groups = vec![
                        "system:serviceaccounts".into(),
                        format!("system:serviceaccounts:{}", r.namespace),
                    ];
                }
            }
            "User" => {
                attrs.resource = "users".into();
                user.name = r.name.clone();
            }
            "Group" => {
                attrs.resource = "groups".into();
                user.groups.push(r.name.clone());
            }
            "UserExtra" => {
                attrs.api_group = "authentication.k8s.io".into();
                attrs.api_version = "v1".into();
                attrs.resource = "userextras".into();
                attrs.subresource = r.field_path.clone();
                user.extra
                    .entry(r.field_path.clone())
                    .or_default()
                    .push(r.name.clone());
            }
            _ => {
                attrs.api_group = "authentication.k8s.io".into();
                attrs.api_version = "v1".into();
                attrs.resource = "uids".into();
                user.uid = r.name.clone();
            }
        }
        let (allowed, reason) = authz.authorize(&attrs);
        if !allowed {
            return Err(ImpersonationError::Forbidden(forbidden(&attrs, &reason)));
        }
    }
    let implied = if user.name == crate::authn::ANONYMOUS {
        crate::authn::ALL_UNAUTHENTICATED
    } else {
        crate::authn::ALL_AUTHENTICATED
    };
    if !user.groups.iter().any(|g| g == implied) {
        user.groups.push(implied.into());
    }
    Ok(Some(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn store_with(objects: &[(&str, Value)]) -> Arc<Store> {
        let store = Arc::new(Store::new(1000, 1000));
        for (res, o) in objects {
            store.create(&gr(res), o.clone()).unwrap();
        }
        store
    }

    fn role(ns: &str, name: &str, rules: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "rules": rules})
    }

    fn rb(ns: &str, name: &str, kind: &str, role: &str, subjects: Value) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}, "roleRef": {"kind": kind, "name": role}, "subjects": subjects})
    }

    #[test]
    fn rules_match_as_rule_allows() {
        let r = Rule::from_json(
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods", "*/status"], "resourceNames": ["a"]}),
        );
        let mut a = Attributes::resource(&UserInfo::default(), "get", "", "pods", "ns", "a");
        assert!(rule_allows(&a, &r));
        a.name = "b".into();
        assert!(!rule_allows(&a, &r));
        a.name = "a".into();
        a.resource = "deployments".into();
        a.subresource = "status".into();
        assert!(rule_allows(&a, &r), "*/status covers deployments/status");
        a.subresource = "scale".into();
        assert!(!rule_allows(&a, &r));
        let pods_only = Rule::new(&["*"], &[""], &["pods"]);
        let mut sub = Attributes::resource(&UserInfo::default(), "get", "", "pods", "ns", "x");
        sub.subresource = "log".into();
        assert!(!rule_allows(&sub, &pods_only), "pods does not cover pods/log");
        let urls = Rule::urls(&["get"], &["/healthz", "/apis/*"]);
        let nr = |p: &str, v: &str| Attributes {
            verb: v.into(),
            path: p.into(),
            ..Default::default()
        };
        assert!(rule_allows(&nr("/healthz", "get"), &urls));
        assert!(rule_allows(&nr("/apis/apps/v1", "get"), &urls));
        assert!(!rule_allows(&nr("/api", "get"), &urls));
        assert!(!rule_allows(&nr("/healthz", "post"), &urls));
    }

    #[test]
    fn forbidden_is_worded_as_the_real_server() {
        let u = user("system:serviceaccount:ns:sa", &[]);
        let e = forbidden(&Attributes::resource(&u, "list", "", "pods", "ns", ""), "");
        assert_eq!(
            e.message,
            "pods is forbidden: User \"system:serviceaccount:ns:sa\" cannot list resource \"pods\" in API group \"\" in the namespace \"ns\""
        );
        assert_eq!(e.status()["details"], json!({"kind": "pods"}));
        let mut a = Attributes::resource(&u, "update", "apps", "deployments", "", "web");
        a.subresource = "status".into();
        let e = forbidden(&a, "");
        assert_eq!(
            e.message,
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:ns:sa\" cannot update resource \"deployments/status\" in API group \"apps\" at the cluster scope"
        );
        assert_eq!(
            e.status()["details"],
            json!({"kind": "deployments", "group": "apps", "name": "web"})
        );
        let e = forbidden(
            &Attributes {
                user: UserInfo::anonymous(),
                verb: "get".into(),
                path: "/api".into(),
                ..Default::default()
            },
            "",
        );
        assert_eq!(
            e.message,
            "forbidden: User \"system:anonymous\" cannot get path \"/api\""
        );
    }

    #[test]
    fn bindings_grant_roles_with_reasons() {
        let store = store_with(&[
            (
                "roles",
                role(
                    "ns",
                    "reader",
                    json!([{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]),
                ),
            ),
            (
                "rolebindings",
                rb(
                    "ns",
                    "read",
                    "Role",
                    "reader",
                    json!([{"kind": "ServiceAccount", "name": "sa"}]),
                ),
            ),
            (
                "clusterroles",
                role(
                    "",
                    "cm",
                    json!([{"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"]}]),
                ),
            ),
            (
                "clusterrolebindings",
                rb(
                    "",
                    "cm-all",
                    "ClusterRole",
                    "cm",
                    json!([{"kind": "Group", "name": "devs"}]),
                ),
            ),
            (
                "clusterrolebindings",
                rb(
                    "",
                    "dangling",
                    "ClusterRole",
                    "missing",
                    json!([{"kind": "User", "name": "bob"}]),
                ),
            ),
        ]);
        let authz = Authorizer::new(store.clone());
        let sa = UserInfo::service_account("ns", "sa", "1");
        let (ok, reason) = authz.authorize(&Attributes::resource(&sa, "list", "", "pods", "ns", ""));
        assert!(ok);
        assert_eq!(
            reason,
            "RBAC: allowed by RoleBinding \"read/ns\" of Role \"reader\" to ServiceAccount \"sa/ns\""
        );
        assert!(
            !authz
                .authorize(&Attributes::resource(&sa, "list", "", "pods", "other", ""))
                .0
        );
        assert!(
            !authz
                .authorize(&Attributes::resource(&sa, "delete", "", "pods", "ns", "x"))
                .0
        );
        let dev = user("alice", &["devs", "system:authenticated"]);
        let (ok, reason) = authz.authorize(&Attributes::resource(&dev, "delete", "", "configmaps", "x", "y"));
        assert!(ok);
        assert_eq!(
            reason,
            "RBAC: allowed by ClusterRoleBinding \"cm-all\" of ClusterRole \"cm\" to Group \"devs\""
        );
        let (ok, reason) = authz.authorize(&Attributes::resource(
            &user("bob", &[]),
            "get",
            "",
            "pods",
            "",
            "",
        ));
        assert!(!ok);
        assert_eq!(
            reason,
            "RBAC: clusterrole.rbac.authorization.k8s.io \"missing\" not found"
        );
        // A change is seen by the next decision.
        store
            .create(
                &gr("rolebindings"),
                rb(
                    "other",
                    "read",
                    "ClusterRole",
                    "cm",
                    json!([{"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}]),
                ),
            )
            .unwrap();
        assert!(
            authz
                .authorize(&Attributes::resource(&sa, "get", "", "configmaps", "other", "c"))
                .0
        );
        assert!(
            authz
                .authorize(&Attributes::resource(
                    &UserInfo::admin(),
                    "get",
                    "",
                    "anything",
                    "",
                    ""
                ))
                .0
        );
    }

    #[test]
    fn aggregation_fills_rules_and_writes_them() {
        let mut objects: Vec<(&str, Value)> = default_cluster_roles()
            .into_iter()
            .map(|v| ("clusterroles", v))
            .collect();
        objects.push((
            "clusterroles",
            json!({"metadata": {"name": "db-view", "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"}},
                   "rules": [{"verbs": ["get"], "apiGroups": ["stable.example.com"], "resources": ["databases"]}]}),
        ));
        let store = store_with(&objects);
        let authz = Authorizer::new(store.clone());
        let idx = authz.index();
        let admin = idx.cluster_roles["admin"].clone();
        let view = idx.cluster_roles["view"].clone();
        assert!(view.iter().any(|r| r.api_groups == ["stable.example.com"]));
        // admin ⊇ edit ⊇ view, through two levels of aggregation.
        assert!(admin.iter().any(|r| r.api_groups == ["stable.example.com"]));
        assert!(
            admin
                .iter()
                .any(|r| r.resources.contains(&"rolebindings".to_string()))
        );
        let stored = store
            .get(&gr("clusterroles"), &(String::new(), "admin".into()))
            .unwrap();
        assert_eq!(
            rules_of(&stored).len(),
            admin.len(),
            "the aggregated rules are stored"
        );
        // Removing the label takes the rules away again.
        let cur = store
            .get(&gr("clusterroles"), &(String::new(), "db-view".into()))
            .unwrap();
        let mut o = (*cur).clone();
        o["metadata"]["labels"] = json!({});
        store.update(&gr("clusterroles"), o, rv_of(&cur)).unwrap();
        assert!(
            !authz.index().cluster_roles["admin"]
                .iter()
                .any(|r| r.api_groups == ["stable.example.com"])
        );
    }

    #[test]
    fn escalation_is_refused_with_the_real_message() {
        let store = store_with(&[
            (
                "roles",
                role(
                    "ns",
                    "rbac-writer",
                    json!([
                        {"verbs": ["create", "update"], "apiGroups": [GROUP], "resources": ["roles", "rolebindings"]},
                        {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}
                    ]),
                ),
            ),
            (
                "rolebindings",
                rb(
                    "ns",
                    "w",
                    "Role",
                    "rbac-writer",
                    json!([{"kind": "User", "name": "alice"}]),
                ),
            ),
            (
                "roles",
                role(
                    "ns",
                    "deleter",
                    json!([{"verbs": ["delete", "get"], "apiGroups": [""], "resources": ["pods"]}]),
                ),
            ),
        ]);
        let authz = Authorizer::new(store);
        let alice = user("alice", &["system:authenticated"]);
        let ok = role(
            "ns",
            "r",
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]),
        );
        authz.check_escalation(&alice, "roles", &ok).unwrap();
        let bad = role(
            "ns",
            "r",
            json!([{"verbs": ["get", "delete", "patch"], "apiGroups": [""], "resources": ["pods", "secrets"]}]),
        );
        let e = authz.check_escalation(&alice, "roles", &bad).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "roles.rbac.authorization.k8s.io \"r\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\" \"patch\"]}\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"delete\" \"patch\"]}"
        );
        let binding = rb(
            "ns",
            "b",
            "Role",
            "deleter",
            json!([{"kind": "User", "name": "bob"}]),
        );
        let e = authz
            .check_escalation(&alice, "rolebindings", &binding)
            .unwrap_err();
        assert!(
            e.message
                .starts_with("rolebindings.rbac.authorization.k8s.io \"b\" is forbidden: user \"alice\""),
            "{}",
            e.message
        );
        let missing = rb("ns", "b", "Role", "nope", json!([]));
        assert_eq!(
            authz
                .check_escalation(&alice, "rolebindings", &missing)
                .unwrap_err()
                .code,
            400
        );
        authz
            .check_escalation(&UserInfo::admin(), "rolebindings", &binding)
            .unwrap();
    }
    #[test]
    fn request_info_derives_verbs_as_the_real_server() {
        let u = UserInfo::anonymous();
        let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = request_attributes(&u, "GET", "/api/v1/namespaces/ns/pods", &q(&[]));
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("list", "ns", "pods")
        );
        let a = request_attributes(&u, "GET", "/api/v1/namespaces/ns/pods", &q(&[("watch", "true")]));
        assert_eq!(a.verb, "watch");
        let a = request_attributes(&u, "GET", "/api/v1/watch/namespaces/ns/pods/p", &q(&[]));
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", "p"));
        let a = request_attributes(
            &u,
            "GET",
            "/api/v1/namespaces/ns/pods",
            &q(&[("fieldSelector", "metadata.name=web")]),
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "web"));
        let a = request_attributes(&u, "DELETE", "/apis/apps/v1/namespaces/ns/deployments", &q(&[]));
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str()),
            ("deletecollection", "apps")
        );
        let a = request_attributes(
            &u,
            "PUT",
            "/apis/apps/v1/namespaces/ns/deployments/d/status",
            &q(&[]),
        );
        assert_eq!(
            (a.verb.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("update", "d", "status")
        );
        let a = request_attributes(&u, "GET", "/api/v1/namespaces/kube-system", &q(&[]));
        assert_eq!(
            (
                a.verb.as_str(),
                a.namespace.as_str(),
                a.resource.as_str(),
                a.name.as_str()
            ),
            ("get", "kube-system", "namespaces", "kube-system")
        );
        let a = request_attributes(
            &u,
            "POST",
            "/api/v1/namespaces/ns/serviceaccounts/sa/token",
            &q(&[]),
        );
        assert_eq!((a.verb.as_str(), a.subresource.as_str()), ("create", "token"));
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/",
        ] {
            let a = request_attributes(&u, "GET", p, &q(&[]));
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.path, p);
        }
    }

    #[test]
    fn impersonation_needs_the_impersonate_verb() {
        let store = store_with(&[
            (
                "clusterroles",
                role(
                    "",
                    "imp",
                    json!([
                        {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["users"], "resourceNames": ["bob"]},
                        {"verbs": ["impersonate"], "apiGroups": [""], "resources": ["groups"]}
                    ]),
                ),
            ),
            (
                "clusterrolebindings",
                rb(
                    "",
                    "imp",
                    "ClusterRole",
                    "imp",
                    json!([{"kind": "User", "name": "alice"}]),
                ),
            ),
        ]);
        let authz = Authorizer::new(store);
        let alice = user("alice", &["system:authenticated"]);
        let mut h = http::HeaderMap::new();
        assert!(impersonate(&authz, &alice, &h).unwrap().is_none());
        h.insert("impersonate-user", "bob".parse().unwrap());
        h.append("impersonate-group", "devs".parse().unwrap());
        let u = impersonate(&authz, &alice, &h).unwrap().unwrap();
        assert_eq!(u.name, "bob");
        assert_eq!(u.groups, ["devs", "system:authenticated"]);
        h.insert("impersonate-user", "carol".parse().unwrap());
        let Err(ImpersonationError::Forbidden(e)) = impersonate(&authz, &alice, &h) else {
            panic!()
        };
        assert_eq!(
            e.message,
            "users \"carol\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"
        );
        h.insert("impersonate-user", "system:serviceaccount:ns:sa".parse().unwrap());
        let Err(ImpersonationError::Forbidden(e)) = impersonate(&authz, &alice, &h) else {
            panic!()
        };
        assert_eq!(
            e.message,
            "serviceaccounts \"sa\" is forbidden: User \"alice\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"ns\""
        );
        let u = impersonate(&authz, &UserInfo::admin(), &h).unwrap().unwrap();
        assert_eq!(u.name, "system:serviceaccount:ns:sa");
        assert_eq!(u.groups, ["devs", "system:authenticated"]);
        h.remove("impersonate-group");
        let u = impersonate(&authz, &UserInfo::admin(), &h).unwrap().unwrap();
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ns",
                "system:authenticated"
            ]
        );
        let mut only_group = http::HeaderMap::new();
        only_group.insert("impersonate-group", "g".parse().unwrap());
        let Err(ImpersonationError::Malformed(m)) = impersonate(&authz, &UserInfo::admin(), &only_group)
        else {
            panic!()
        };
        assert!(m.ends_with("without impersonating a user"), "{m}");
    }
    #[test]
    fn ten_thousand_bindings_are_indexed_by_subject() {
        let store = Arc::new(Store::new(100_000, 100_000));
        store
            .create(
                &gr("clusterroles"),
                role(
                    "",
                    "reader",
                    json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]),
                ),
            )
            .unwrap();
        for i in 0..10_000 {
            let ns = format!("ns-{}", i % 1000);
            store
                .create(
                    &gr("rolebindings"),
                    rb(
                        &ns,
                        &format!("b-{i}"),
                        "ClusterRole",
                        "reader",
                        json!([{"kind": "User", "name": format!("user-{i}")}]),
                    ),
                )
                .unwrap();
        }
        let authz = Authorizer::new(store);
        let started = std::time::Instant::now();
        let _ = authz.index();
        let built = started.elapsed();
        let started = std::time::Instant::now();
        for i in 0..10_000 {
            let u = user(&format!("user-{i}"), &["system:authenticated"]);
            let ns = format!("ns-{}", i % 1000);
            assert!(
                authz
                    .authorize(&Attributes::resource(&u, "get", "", "pods", &ns, "p"))
                    .0
            );
            let other = format!("ns-{}", (i + 1) % 1000);
            assert!(
                !authz
                    .authorize(&Attributes::resource(&u, "get", "", "pods", &other, "p"))
                    .0
            );
        }
        println!(
            "10,000 RoleBindings: index built in {built:?}; 20,000 decisions in {:?}",
            started.elapsed()
        );
        // Changes one by one, each followed by a decision (a bulk apply by a non-admin): the
        // index is updated in place, not rebuilt.
        let started = std::time::Instant::now();
        let rbs = gr("rolebindings");
        for i in 0..2_000 {
            let ns = format!("ns-{}", i % 1000);
            let key = (ns.clone(), format!("b-{i}"));
            let cur = authz.store.get(&rbs, &key).unwrap();
            let mut moved = (*cur).clone();
            moved["subjects"] = json!([{"kind": "User", "name": format!("other-{i}")}]);
            authz.store.update(&rbs, moved, rv_of(&cur)).unwrap();
            let u = user(&format!("user-{i}"), &[]);
            let o = user(&format!("other-{i}"), &[]);
            assert!(
                !authz
                    .authorize(&Attributes::resource(&u, "get", "", "pods", &ns, "p"))
                    .0
            );
            assert!(
                authz
                    .authorize(&Attributes::resource(&o, "get", "", "pods", &ns, "p"))
                    .0
            );
            let cur = authz.store.get(&rbs, &key).unwrap();
            authz.store.delete(&rbs, (*cur).clone(), rv_of(&cur)).unwrap();
            assert!(
                !authz
                    .authorize(&Attributes::resource(&o, "get", "", "pods", &ns, "p"))
                    .0
            );
        }
        println!(
            "2,000 binding updates and deletes, each followed by decisions: {:?}",
            started.elapsed()
        );
    }
}

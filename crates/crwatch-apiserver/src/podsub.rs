//! The Pod subresources that are not plain reads and writes of the Pod: `pods/eviction`
//! (deletion that honours PodDisruptionBudgets, as `pkg/registry/core/pod/storage/eviction.go`),
//! `pods/binding` (what the scheduler writes) and `pods/log` (no container runs here, so a
//! scheduled Pod's log is empty). `pods/ephemeralcontainers` is an update of the Pod that may
//! only add ephemeral containers (in `Api::prepare` and [`crate::strategy`]).

use serde_json::{Value, json};

use crate::api::{Api, Ctx, Out};
use crate::meta::{meta_str, set_meta};
use crate::registry::GroupResource;
use crate::selector::LabelSelector;
use crate::status::{ApiError, ApiResult};

fn pods() -> GroupResource {
    GroupResource {
        group: String::new(),
        resource: "pods".into(),
    }
}

fn success(code: u16) -> Out {
    Out {
        code,
        body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": code}),
        warnings: vec![],
    }
}

fn the_pod(api: &Api, ctx: &Ctx) -> ApiResult<std::sync::Arc<Value>> {
    api.store
        .get(&pods(), &(ctx.namespace.clone(), ctx.name.clone()))
        .ok_or_else(|| ApiError::not_found("", "pods", &ctx.name))
}

fn body_json(body: &[u8]) -> ApiResult<Value> {
    crate::decode::json(body).map(|d| d.value)
}

/// POST `pods/{name}/eviction`: delete the Pod unless that would take a PodDisruptionBudget
/// below what it allows (429 with the budget's numbers, as the real server answers).
pub async fn eviction(api: &Api, ctx: &Ctx, body: &[u8]) -> ApiResult<Out> {
    let eviction = body_json(body)?;
    let named = eviction
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if named != ctx.name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let pod = the_pod(api, ctx)?;
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // canIgnorePDB: terminal and pending Pods, and Pods already being deleted.
    let ignore_budget = matches!(phase, "Succeeded" | "Failed" | "Pending")
        || !meta_str(&pod, "deletionTimestamp").is_empty();
    if !ignore_budget {
        check_budget(api, &pod, &ctx.namespace)?;
    }
    let options = eviction
        .get("deleteOptions")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut del = ctx.clone();
    del.sub = String::new();
    api.delete(&del, options.to_string().as_bytes()).await?;
    Ok(success(201))
}

/// The Pod's PodDisruptionBudget, if any, must allow one more disruption; it is then counted.
fn check_budget(api: &Api, pod: &Value, namespace: &str) -> ApiResult<()> {
    let gr = GroupResource {
        group: "policy".into(),
        resource: "poddisruptionbudgets".into(),
    };
    let budgets: Vec<_> = api
        .store
        .list(&gr, Some(namespace))
        .0
        .into_iter()
        .filter(|pdb| {
            pdb.pointer("/spec/selector")
                .and_then(|s| LabelSelector::from_object(s).ok())
                // An empty selector matches every Pod in policy/v1.
                .is_some_and(|s| s.matches_object(pod))
        })
        .collect();
    let pdb = match budgets.as_slice() {
        [] => return Ok(()),
        [one] => one.clone(),
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
    };
    let status = |k: &str| {
        pdb.pointer(&format!("/status/{k}"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let observed = status("observedGeneration");
    let generation = pdb
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let name = meta_str(&pdb, "name").to_string();
    let refuse = |message: String| {
        let mut e = ApiError::new(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
        );
        e.details = Some(Box::new(
            json!({"causes": [{"reason": "DisruptionBudget", "message": message}]}),
        ));
        e
    };
    if observed < generation {
        return Err(refuse(format!(
            "The disruption budget {name} is still being processed by the server."
        )));
    }
    if status("disruptionsAllowed") < 1 {
        return Err(refuse(format!(
            "The disruption budget {name} needs {} healthy pods and has {} currently",
            status("desiredHealthy"),
            status("currentHealthy")
        )));
    }
    let mut next = (*pdb).clone();
    next["status"]["disruptionsAllowed"] = json!(status("disruptionsAllowed") - 1);
    next["status"]["disruptedPods"][meta_str(pod, "name")] = json!(crate::meta::now());
    let rv = meta_str(&pdb, "resourceVersion").parse().unwrap_or(0);
    api.store
        .update(&gr, next, rv)
        // A concurrent change of the budget: the client retries, as with the real server.
        .map_err(|_| {
            ApiError::conflict(
                "policy",
                "poddisruptionbudgets",
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        })?;
    Ok(())
}

/// POST `pods/{name}/binding`: assign the Pod to a Node, as the scheduler does.
pub async fn binding(api: &Api, ctx: &Ctx, body: &[u8]) -> ApiResult<Out> {
    let binding = body_json(body)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &ctx.name,
            vec![crate::status::Cause::new(
                "FieldValueRequired",
                "target.name",
                "Required value",
            )],
        ));
    }
    let pod = the_pod(api, ctx)?;
    let conflict = |why: String| ApiError::conflict("", "pods/binding", &ctx.name, &why);
    if !meta_str(&pod, "deletionTimestamp").is_empty() {
        return Err(conflict(format!(
            "pod {} is being deleted, cannot be assigned to a host",
            ctx.name
        )));
    }
    let current = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !current.is_empty() {
        return Err(conflict(format!(
            "pod {} is already assigned to node {current:?}",
            ctx.name
        )));
    }
    let mut next = (*pod).clone();
    next["spec"]["nodeName"] = json!(node);
    if let Some(annotations) = binding
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in annotations {
            next["metadata"]["annotations"][k] = v.clone();
        }
    }
    let mut conditions = next
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": crate::meta::now()}));
    next["status"]["conditions"] = json!(conditions);
    set_meta(&mut next, "resourceVersion", Value::Null);
    let rv = meta_str(&pod, "resourceVersion").parse().unwrap_or(0);
    api.store.update(&pods(), next, rv).map_err(|_| {
        conflict(
            "the object has been modified; please apply your changes to the latest version and try again"
                .into(),
        )
    })?;
    Ok(success(201))
}

/// GET `pods/{name}/log`: no container runs, so a scheduled Pod has an empty log; an
/// unscheduled one has no host to ask, as the real server says.
pub fn log(api: &Api, ctx: &Ctx) -> ApiResult<String> {
    let pod = the_pod(api, ctx)?;
    if pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .is_empty()
    {
        return Err(ApiError::bad_request(format!(
            "pod {} does not have a host assigned",
            ctx.name
        )));
    }
    Ok(String::new())
}

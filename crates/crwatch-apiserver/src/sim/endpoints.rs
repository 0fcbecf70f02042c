//! The EndpointSlice and Endpoints controllers (pkg/controller/endpointslice,
//! pkg/controller/endpoint): for every Service with a selector, EndpointSlices named
//! `<service>-<random>` labelled `kubernetes.io/service-name` and managed by
//! `endpointslice-controller.k8s.io`, one per set of resolved ports, listing the selected Pods
//! that have an IP with their ready/serving/terminating conditions; and the legacy Endpoints
//! object with ready and not-ready addresses.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Actor, Kind, Sim, gr, is_deleting, is_ready, owner_ref, phase, str_at};
use crate::meta::meta_str;
use crate::selector::labels_of;
use crate::status::ApiResult;

const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One resolved port: name, port, protocol, appProtocol.
type Port = (String, i64, String, Option<String>);

/// The Service's ports resolved against a Pod's container ports; `None` if a named target port
/// is not found on the Pod (such a Pod is left out, as the real controllers leave it out).
fn resolve_ports(svc: &Value, pod: &Value) -> Option<Vec<Port>> {
    let mut out = vec![];
    for p in svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = str_at(p, "/name").to_string();
        let protocol = match str_at(p, "/protocol") {
            "" => "TCP".to_string(),
            other => other.to_string(),
        };
        let port = match p.get("targetPort") {
            Some(Value::Number(n)) => n.as_i64()?,
            Some(Value::String(s)) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => pod
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
                    .find(|cp| str_at(cp, "/name") == s)
                    .and_then(|cp| cp.get("containerPort"))
                    .and_then(Value::as_i64)?,
            },
            _ => p.get("port").and_then(Value::as_i64)?,
        };
        let app = p.get("appProtocol").and_then(Value::as_str).map(String::from);
        out.push((name, port, protocol, app));
    }
    Some(out)
}

fn ports_json(ports: &[Port]) -> Value {
    json!(
        ports
            .iter()
            .map(|(name, port, protocol, app)| {
                let mut m = json!({"name": name, "port": port, "protocol": protocol});
                if let Some(a) = app {
                    m["appProtocol"] = json!(a);
                }
                m
            })
            .collect::<Vec<_>>()
    )
}

impl Sim {
    pub(super) async fn sync_service(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let eps_gr = gr("", "endpoints");
        let Some(svc) = self.get(Kind::Service, ns, name) else {
            // The Endpoints controller deletes the Endpoints of a deleted Service (slices go
            // with their owner).
            if let Some(ep) = self.get_gr(&eps_gr, ns, name)
                && super::served(&self.api, &eps_gr)
            {
                self.delete(&eps_gr, &ep, json!({}), &Actor::controller("endpoint-controller"))
                    .await?;
            }
            return Ok(());
        };
        let selector: Map<String, Value> = svc
            .pointer("/spec/selector")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if selector.is_empty() || str_at(&svc, "/spec/type") == "ExternalName" || is_deleting(&svc) {
            return Ok(());
        }
        let publish_not_ready = svc
            .pointer("/spec/publishNotReadyAddresses")
            .and_then(Value::as_bool)
            == Some(true);
        let mut pods: Vec<Arc<Value>> = self
            .list(Kind::Pod, Some(ns))
            .into_iter()
            .filter(|p| {
                let labels = labels_of(p);
                selector
                    .iter()
                    .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
                    && !str_at(p, "/status/podIP").is_empty()
                    && !matches!(phase(p), "Succeeded" | "Failed")
            })
            .collect();
        pods.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
        let nodes: BTreeMap<String, Arc<Value>> = self
            .list(Kind::Node, None)
            .into_iter()
            .map(|n| (meta_str(&n, "name").to_string(), n))
            .collect();
        let mut groups: BTreeMap<Vec<Port>, Vec<Arc<Value>>> = BTreeMap::new();
        for p in &pods {
            if let Some(ports) = resolve_ports(&svc, p) {
                groups.entry(ports).or_default().push(p.clone());
            }
        }
        let headless = str_at(&svc, "/spec/clusterIP") == "None";
        let mut base_labels: Map<String, Value> = svc
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if headless {
            base_labels.insert("service.kubernetes.io/headless".into(), json!(""));
        }
        self.sync_slices(&svc, &groups, &nodes, &base_labels, publish_not_ready)
            .await?;
        self.sync_endpoints(&svc, &groups, &base_labels, publish_not_ready)
            .await
    }

    async fn sync_slices(
        &mut self,
        svc: &Value,
        groups: &BTreeMap<Vec<Port>, Vec<Arc<Value>>>,
        nodes: &BTreeMap<String, Arc<Value>>,
        base_labels: &Map<String, Value>,
        publish_not_ready: bool,
    ) -> ApiResult<()> {
        let slices_gr = gr("discovery.k8s.io", "endpointslices");
        if !super::served(&self.api, &slices_gr) {
            return Ok(());
        }
        let ns = meta_str(svc, "namespace").to_string();
        let name = meta_str(svc, "name").to_string();
        let who = Actor::controller("endpointslice-controller");
        let mut existing: Vec<Arc<Value>> = self
            .api
            .store
            .list(&slices_gr, Some(&ns))
            .0
            .into_iter()
            .filter(|s| {
                str_at(s, "/metadata/labels/kubernetes.io~1service-name") == name
                    && str_at(s, "/metadata/labels/endpointslice.kubernetes.io~1managed-by")
                        == CONTROLLER_NAME
            })
            .collect();
        existing.sort_by(|a, b| meta_str(a, "name").cmp(meta_str(b, "name")));
        let mut labels = base_labels.clone();
        labels.insert(SERVICE_NAME.into(), json!(name));
        labels.insert(MANAGED_BY.into(), json!(CONTROLLER_NAME));
        let mut svc_ref = svc.clone();
        svc_ref["apiVersion"] = json!("v1");
        svc_ref["kind"] = json!("Service");
        // What each slice should hold: one per port set (an empty placeholder when no Pod).
        let mut wanted: Vec<(Value, Value)> = groups
            .iter()
            .map(|(ports, pods)| {
                let endpoints: Vec<Value> = pods
                    .iter()
                    .map(|p| {
                        let deleting = is_deleting(p);
                        let ready = publish_not_ready || (is_ready(p) && !deleting);
                        let serving = publish_not_ready || is_ready(p);
                        let node = str_at(p, "/spec/nodeName");
                        let mut e = json!({
                            "addresses": [str_at(p, "/status/podIP")],
                            "conditions": {"ready": ready, "serving": serving, "terminating": deleting},
                            "targetRef": {"kind": "Pod", "namespace": ns, "name": meta_str(p, "name"), "uid": meta_str(p, "uid")},
                        });
                        if !node.is_empty() {
                            e["nodeName"] = json!(node);
                            if let Some(zone) = nodes
                                .get(node)
                                .and_then(|n| n.pointer("/metadata/labels/topology.kubernetes.io~1zone"))
                            {
                                e["zone"] = zone.clone();
                            }
                        }
                        e
                    })
                    .collect();
                (ports_json(ports), json!(endpoints))
            })
            .collect();
        if wanted.is_empty() {
            wanted.push((json!([]), json!([])));
        }
        let mut unused: Vec<Arc<Value>> = existing.clone();
        for (ports, endpoints) in wanted {
            // Reuse the slice with the same ports, else any spare one.
            let at = unused
                .iter()
                .position(|s| s.get("ports").cloned().unwrap_or(json!([])) == ports)
                .or(if unused.is_empty() { None } else { Some(0) });
            match at {
                Some(i) => {
                    let cur = unused.remove(i);
                    let mut next = (*cur).clone();
                    next["addressType"] = json!("IPv4");
                    next["endpoints"] = endpoints;
                    next["ports"] = ports;
                    let mut l = cur
                        .pointer("/metadata/labels")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    for (k, v) in &labels {
                        l.insert(k.clone(), v.clone());
                    }
                    next["metadata"]["labels"] = Value::Object(l);
                    if next != *cur {
                        self.update(&slices_gr, &next, "", &who).await?;
                    }
                }
                None => {
                    let slice = json!({
                        "metadata": {
                            "generateName": format!("{name}-"),
                            "namespace": ns,
                            "labels": labels,
                            "ownerReferences": [owner_ref(&svc_ref, "v1", "Service")],
                        },
                        "addressType": "IPv4",
                        "endpoints": endpoints,
                        "ports": ports,
                    });
                    self.create(&slices_gr, &ns, &slice, &who).await?;
                }
            }
        }
        for s in unused {
            self.delete(&slices_gr, &s, json!({}), &who).await?;
        }
        Ok(())
    }

    async fn sync_endpoints(
        &mut self,
        svc: &Value,
        groups: &BTreeMap<Vec<Port>, Vec<Arc<Value>>>,
        base_labels: &Map<String, Value>,
        publish_not_ready: bool,
    ) -> ApiResult<()> {
        let eps_gr = gr("", "endpoints");
        if !super::served(&self.api, &eps_gr) {
            return Ok(());
        }
        let ns = meta_str(svc, "namespace").to_string();
        let name = meta_str(svc, "name").to_string();
        let who = Actor::controller("endpoint-controller");
        let mut subsets = vec![];
        for (ports, pods) in groups {
            let mut ready = vec![];
            let mut not_ready = vec![];
            for p in pods {
                // Terminating Pods are left out of Endpoints (unless published anyway).
                if is_deleting(p) && !publish_not_ready {
                    continue;
                }
                let mut addr = json!({
                    "ip": str_at(p, "/status/podIP"),
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": meta_str(p, "name"), "uid": meta_str(p, "uid")},
                });
                let node = str_at(p, "/spec/nodeName");
                if !node.is_empty() {
                    addr["nodeName"] = json!(node);
                }
                if publish_not_ready || is_ready(p) {
                    ready.push(addr);
                } else {
                    not_ready.push(addr);
                }
            }
            if ready.is_empty() && not_ready.is_empty() {
                continue;
            }
            let key = |a: &Value| str_at(a, "/ip").to_string();
            ready.sort_by_key(key);
            not_ready.sort_by_key(key);
            let mut s = json!({"ports": ports_json(ports).as_array().cloned().unwrap_or_default().into_iter().map(|mut p| {
                if p["name"] == ""
                    && let Some(m) = p.as_object_mut()
                {
                    m.remove("name");
                }
                p
            }).collect::<Vec<_>>()});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            subsets.push(s);
        }
        let mut labels = base_labels.clone();
        labels.insert("endpointslice.kubernetes.io/skip-mirror".into(), json!("true"));
        match self.get_gr(&eps_gr, &ns, &name) {
            Some(cur) => {
                let mut next = (*cur).clone();
                next["metadata"]["labels"] = Value::Object(labels);
                if subsets.is_empty() {
                    if let Some(m) = next.as_object_mut() {
                        m.remove("subsets");
                    }
                } else {
                    next["subsets"] = json!(subsets);
                }
                if next != *cur {
                    self.update(&eps_gr, &next, "", &who).await?;
                }
            }
            None => {
                let mut ep = json!({"metadata": {"name": name, "namespace": ns, "labels": labels}});
                if !subsets.is_empty() {
                    ep["subsets"] = json!(subsets);
                }
                match self.create(&eps_gr, &ns, &ep, &who).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_ports_resolve_by_number_and_name() {
        let svc = json!({"spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"port": 9000},
            {"name": "m", "port": 9100, "targetPort": 9101, "protocol": "UDP"},
        ]}});
        let pod = json!({"spec": {"containers": [{"name": "c", "ports": [{"name": "web", "containerPort": 8080}]}]}});
        let ports = resolve_ports(&svc, &pod).unwrap();
        assert_eq!(ports[0], ("http".into(), 8080, "TCP".into(), None));
        assert_eq!(ports[1], ("".into(), 9000, "TCP".into(), None));
        assert_eq!(ports[2], ("m".into(), 9101, "UDP".into(), None));
        let other = json!({"spec": {"containers": [{"name": "c"}]}});
        assert!(resolve_ports(&svc, &other).is_none());
    }
}

//! Unit tests of the protobuf decoder, on bodies built by a tiny test-only encoder.

use serde_json::json;

use super::*;

/// A protobuf message under construction.
#[derive(Default, Clone)]
struct Enc(Vec<u8>);

impl Enc {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, tag: u32, wt: u8) {
        self.varint(u64::from(tag) << 3 | u64::from(wt));
    }
    fn int(mut self, tag: u32, v: i64) -> Self {
        self.key(tag, 0);
        self.varint(v as u64);
        self
    }
    fn bytes(mut self, tag: u32, b: &[u8]) -> Self {
        self.key(tag, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, tag: u32, s: &str) -> Self {
        self.bytes(tag, s.as_bytes())
    }
    fn msg(self, tag: u32, m: Enc) -> Self {
        self.bytes(tag, &m.0)
    }
    fn entry(self, tag: u32, k: &str, v: &[u8]) -> Self {
        self.msg(tag, Enc::default().str(1, k).bytes(2, v))
    }
}

fn e() -> Enc {
    Enc::default()
}

/// Wrap a typed message in the `k8s\0` + runtime.Unknown envelope.
fn envelope(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
    let unknown = e()
        .msg(1, e().str(1, api_version).str(2, kind))
        .msg(2, raw)
        .str(3, "")
        .str(4, "application/vnd.kubernetes.protobuf");
    [MAGIC.as_slice(), &unknown.0].concat()
}

/// ObjectMeta as Go writes it: every non-pointer string, even empty, and a zero Time.
fn meta(name: &str, namespace: &str) -> Enc {
    e().str(1, name)
        .str(2, "")
        .str(3, namespace)
        .str(4, "")
        .str(5, "")
        .str(6, "")
        .int(7, 0)
        .msg(8, e())
}

#[test]
fn config_map() {
    let raw = e()
        .msg(1, meta("settings", "team-a").entry(11, "app", b"web"))
        .entry(2, "a", b"b")
        .entry(2, "greeting", "héllo".as_bytes())
        .entry(3, "blob", &[0, 1, 2, 255])
        .str(99, "an unknown field is skipped");
    let v = decode(&envelope("v1", "ConfigMap", raw)).expect("decodes");
    assert_eq!(
        v,
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "team-a", "labels": {"app": "web"}},
            "data": {"a": "b", "greeting": "héllo"},
            "binaryData": {"blob": "AAEC/w=="},
        })
    );
    // apiVersion and kind come first, as in JSON bodies.
    let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
    assert_eq!(keys[..2], ["apiVersion", "kind"]);
}

#[test]
fn secret_data_is_base64_and_immutable_false_is_kept() {
    let raw = e()
        .msg(1, meta("s", ""))
        .entry(2, "password", b"hunter2")
        .str(3, "Opaque")
        .int(5, 0);
    let v = decode(&envelope("v1", "Secret", raw)).expect("decodes");
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
               "data": {"password": "aHVudGVyMg=="}, "type": "Opaque", "immutable": false})
    );
}

fn container() -> Enc {
    e().str(1, "nginx")
        .str(2, "nginx:1.27")
        .str(3, "nginx")
        .str(3, "-g")
        .str(5, "")
        .msg(
            6,
            e().str(1, "http").int(2, 0).int(3, 80).str(4, "TCP").str(5, ""),
        )
        .msg(
            8,
            e().msg(1, e().str(1, "cpu").msg(2, e().str(1, "500m")))
                .msg(2, e().str(1, "memory").msg(2, e().str(1, "64Mi"))),
        )
        .str(13, "")
        .int(16, 0)
        .int(17, 0)
        .int(18, 0)
        .msg(
            15,
            e().int(2, 0) // privileged: a pointer, so an explicit false is kept
                .int(4, 1000),
        )
        .msg(
            10,
            // Probe { handler (inline) { httpGet { path, port: IntOrString } }, periodSeconds }
            e().msg(
                1,
                e().msg(
                    2,
                    e().str(1, "/healthz")
                        .msg(2, e().int(1, 1).int(2, 0).str(3, "http")),
                ),
            )
            .int(2, 0)
            .int(4, 10),
        )
}

#[test]
fn deployment() {
    let labels = |m: Enc| m.entry(11, "app", b"web");
    let raw = e()
        .msg(
            1,
            labels(meta("web", "default")).msg(8, e().int(1, 1_704_067_200)),
        )
        .msg(
            2,
            e().int(1, 2)
                .msg(2, e().entry(1, "app", b"web"))
                .msg(
                    3,
                    e().msg(1, labels(meta("", ""))).msg(
                        2,
                        e().msg(1, e().str(1, "cache").msg(2, e().msg(2, e().str(1, "Memory"))))
                            .msg(2, container())
                            .str(3, "Always")
                            .int(4, 30)
                            .str(6, "ClusterFirst")
                            .int(11, 0)
                            .int(21, 0),
                    ),
                )
                .msg(
                    4,
                    e().str(1, "RollingUpdate").msg(
                        2,
                        e().msg(1, e().int(1, 0).int(2, 1).str(3, ""))
                            .msg(2, e().int(1, 1).int(2, 0).str(3, "25%")),
                    ),
                )
                .int(5, 0)
                .int(6, -1)
                .int(7, 0)
                .int(9, 600),
        )
        .msg(3, e().int(1, 0).int(2, 0).int(7, 0));
    let v = decode(&envelope("apps/v1", "Deployment", raw)).expect("decodes");
    assert_eq!(
        v,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "default",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"app": "web"},
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "volumes": [{"name": "cache", "emptyDir": {"medium": "Memory"}}],
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx:1.27",
                            "command": ["nginx", "-g"],
                            "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                            "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
                            "securityContext": {"privileged": false, "runAsUser": 1000},
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 10,
                            },
                        }],
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 30,
                        "dnsPolicy": "ClusterFirst",
                        "automountServiceAccountToken": false,
                    },
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": "25%"}},
                "revisionHistoryLimit": -1,
                "progressDeadlineSeconds": 600,
            },
            "status": {},
        })
    );
}

#[test]
fn packed_repeated_scalars_and_micro_time() {
    assert_eq!(
        well_known(&e().int(1, 1_704_067_200).int(2, 123_456_789).0, Wk::MicroTime)
            .ok()
            .flatten(),
        Some(json!("2024-01-01T00:00:00.123456Z"))
    );
    assert_eq!(
        well_known(&e().int(1, 0).0, Wk::Time).ok().flatten(),
        Some(json!("1970-01-01T00:00:00Z"))
    );
    assert!(well_known(&[], Wk::Time).ok().flatten().is_none());
    // supplementalGroups, packed (as proto3 writers do) and unpacked (as Go's proto2 does).
    let mut packed = e();
    for g in [1u64, 2, 300] {
        packed.varint(g);
    }
    let pod = e().msg(14, e().bytes(4, &packed.0).int(4, 7));
    let raw = e().msg(2, e().msg(3, e().msg(2, pod)));
    let v = decode(&envelope("apps/v1", "Deployment", raw)).expect("decodes");
    assert_eq!(
        v["spec"]["template"]["spec"]["securityContext"],
        json!({"supplementalGroups": [1, 2, 300, 7]})
    );
    // A Lease's MicroTimes.
    let raw = e().msg(1, meta("l", "ns")).msg(
        2,
        e().str(1, "me")
            .int(2, 15)
            .msg(4, e().int(1, 1_704_067_200).int(2, 5_000))
            .int(5, 0),
    );
    let v = decode(&envelope("coordination.k8s.io/v1", "Lease", raw)).expect("decodes");
    assert_eq!(
        v["spec"],
        json!({"holderIdentity": "me", "leaseDurationSeconds": 15,
               "renewTime": "2024-01-01T00:00:00.000005Z", "leaseTransitions": 0})
    );
}

#[test]
fn rejects_malformed_bodies_with_400() {
    let good = envelope("v1", "ConfigMap", e().msg(1, meta("x", "")).entry(2, "a", b"b"));
    let bad_bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("wrong magic", [b"k8s\x01".as_slice(), &good[4..]].concat()),
        ("json", br#"{"kind":"ConfigMap"}"#.to_vec()),
        ("truncated varint", [MAGIC.as_slice(), &[0x0a, 0x80]].concat()),
        (
            "overlong varint",
            [MAGIC.as_slice(), &[0x08], &[0xff; 11]].concat(),
        ),
        (
            "length past the end",
            [MAGIC.as_slice(), &[0x12, 0x05, 0x01]].concat(),
        ),
        (
            "huge length",
            [MAGIC.as_slice(), &[0x12, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat(),
        ),
        ("group wire type", [MAGIC.as_slice(), &[0x0b]].concat()),
        ("no kind", [MAGIC.as_slice(), &e().msg(2, e()).0].concat()),
        (
            "string field as varint",
            envelope("v1", "ConfigMap", e().msg(1, e().int(1, 5))),
        ),
        (
            "bad utf-8",
            envelope("v1", "ConfigMap", e().msg(1, e().bytes(1, &[0xff, 0xfe]))),
        ),
        (
            "nanos out of range",
            envelope(
                "v1",
                "ConfigMap",
                e().msg(1, e().msg(8, e().int(1, 1).int(2, -1))),
            ),
        ),
    ];
    for (what, body) in bad_bodies {
        let err = decode(&body).expect_err(what);
        assert_eq!(err.code, 400, "{what}: {}", err.message);
    }
    let err = decode(&envelope("example.com/v1", "Widget", e())).expect_err("unknown kind");
    assert_eq!(err.code, 415);
}

#[test]
fn never_panics_on_truncated_or_corrupted_input() {
    let raw = e()
        .msg(1, meta("web", "default"))
        .msg(2, e().int(1, 2).msg(3, e().msg(2, e().msg(2, container()))));
    let good = envelope("apps/v1", "Deployment", raw);
    assert!(decode(&good).is_ok());
    for cut in 0..good.len() {
        let _ = decode(&good[..cut]);
    }
    for i in 4..good.len() {
        for x in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut b = good.clone();
            b[i] ^= x;
            let _ = decode(&b);
        }
    }
}

#[test]
fn deeply_nested_input_is_bounded() {
    // Deployment.spec.template.spec.affinity... cannot nest without limit, but inline
    // Volume sources and Probe handlers recurse through the tables only as deep as the schema.
    let mut m = e();
    for _ in 0..200 {
        m = e().msg(1, m);
    }
    let _ = decode(&envelope("v1", "Namespace", m));
}

//! Field tables for the Kubernetes protobuf messages the server decodes.
//!
//! GENERATED — do not edit by hand. Generated from k8s-pb 0.9.0's prost message definitions
//! (the Kubernetes protobuf schema: field tags and wire types), taking only the messages
//! reachable from the served kinds, with JSON field names and required-ness from k8s-openapi
//! 0.29.0 (the Go `json` tags) and a hand-kept list of Go pointer fields (whose explicit zero
//! values are kept). How: a throwaway Python script (kept outside the repository) reads the
//! crates' sources from the cargo registry (`cargo fetch` of a crate depending on both): every
//! `#[prost(<type>, tag = "N")] pub <field>` of k8s-pb's `src/**/mod.rs`, walking message-typed
//! fields from the root kinds in [`root`] (well-known messages such as Time, IntOrString,
//! Quantity and RawExtension stop the walk: mod.rs decodes them), and the `"jsonName" =>
//! Field::Key_<field>` lines of k8s-openapi's `src/v1_3x/**`; it prints this file.
//!
//! Each field is `(tag, JSON name, kind, flags)`: `R` repeated, `Z` drop zero values (a
//! non-pointer Go field with `omitempty`, which Go's encoder writes even when zero), `I` a Go
//! struct embedded inline (its fields are merged into the parent; the name is empty), `N` none.

#![allow(clippy::all)]
#![cfg_attr(rustfmt, rustfmt_skip)]

use super::{Kind::*, Message, Wk, I, N, R, Z};

pub(super) static MESSAGES: &[Message] = &[
    // 0
    Message { name: "io.k8s.api.core.v1.Namespace", fields: &[(1, "metadata", Msg(11), N), (2, "spec", Msg(12), N), (3, "status", Msg(13), N)] },
    // 1
    Message { name: "io.k8s.api.core.v1.ConfigMap", fields: &[(1, "metadata", Msg(11), N), (2, "data", MapStr, N), (3, "binaryData", MapBytes, N), (4, "immutable", Bool, N)] },
    // 2
    Message { name: "io.k8s.api.core.v1.Secret", fields: &[(1, "metadata", Msg(11), N), (2, "data", MapBytes, N), (3, "type", Str, Z), (4, "stringData", MapStr, N), (5, "immutable", Bool, N)] },
    // 3
    Message { name: "io.k8s.api.core.v1.ServiceAccount", fields: &[(1, "metadata", Msg(11), N), (2, "secrets", Msg(14), R), (3, "imagePullSecrets", Msg(15), R), (4, "automountServiceAccountToken", Bool, N)] },
    // 4
    Message { name: "io.k8s.api.core.v1.Event", fields: &[(1, "metadata", Msg(11), N), (2, "involvedObject", Msg(14), N), (3, "reason", Str, Z), (4, "message", Str, Z), (5, "source", Msg(16), N), (6, "firstTimestamp", Wk(Wk::Time), N), (7, "lastTimestamp", Wk(Wk::Time), N), (8, "count", I32, Z), (9, "type", Str, Z), (10, "eventTime", Wk(Wk::MicroTime), N), (11, "series", Msg(17), N), (12, "action", Str, Z), (13, "related", Msg(14), N), (14, "reportingComponent", Str, Z), (15, "reportingInstance", Str, Z)] },
    // 5
    Message { name: "io.k8s.api.events.v1.Event", fields: &[(1, "metadata", Msg(11), N), (2, "eventTime", Wk(Wk::MicroTime), N), (3, "series", Msg(18), N), (4, "reportingController", Str, Z), (5, "reportingInstance", Str, Z), (6, "action", Str, Z), (7, "reason", Str, Z), (8, "regarding", Msg(14), N), (9, "related", Msg(14), N), (10, "note", Str, Z), (11, "type", Str, Z), (12, "deprecatedSource", Msg(16), N), (13, "deprecatedFirstTimestamp", Wk(Wk::Time), N), (14, "deprecatedLastTimestamp", Wk(Wk::Time), N), (15, "deprecatedCount", I32, Z)] },
    // 6
    Message { name: "io.k8s.api.coordination.v1.Lease", fields: &[(1, "metadata", Msg(11), N), (2, "spec", Msg(19), N)] },
    // 7
    Message { name: "io.k8s.api.apps.v1.Deployment", fields: &[(1, "metadata", Msg(11), N), (2, "spec", Msg(20), N), (3, "status", Msg(21), N)] },
    // 8
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions", fields: &[(1, "gracePeriodSeconds", I64, N), (2, "preconditions", Msg(22), N), (3, "orphanDependents", Bool, N), (4, "propagationPolicy", Str, N), (5, "dryRun", Str, R), (6, "ignoreStoreReadErrorWithClusterBreakingPotential", Bool, N)] },
    // 9
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.CreateOptions", fields: &[(1, "dryRun", Str, R), (3, "fieldManager", Str, Z), (4, "fieldValidation", Str, Z)] },
    // 10
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.UpdateOptions", fields: &[(1, "dryRun", Str, R), (2, "fieldManager", Str, Z), (3, "fieldValidation", Str, Z)] },
    // 11
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", fields: &[(1, "name", Str, Z), (2, "generateName", Str, Z), (3, "namespace", Str, Z), (4, "selfLink", Str, Z), (5, "uid", Str, Z), (6, "resourceVersion", Str, Z), (7, "generation", I64, Z), (8, "creationTimestamp", Wk(Wk::Time), N), (9, "deletionTimestamp", Wk(Wk::Time), N), (10, "deletionGracePeriodSeconds", I64, N), (11, "labels", MapStr, N), (12, "annotations", MapStr, N), (13, "ownerReferences", Msg(23), R), (14, "finalizers", Str, R), (17, "managedFields", Msg(24), R)] },
    // 12
    Message { name: "io.k8s.api.core.v1.NamespaceSpec", fields: &[(1, "finalizers", Str, R)] },
    // 13
    Message { name: "io.k8s.api.core.v1.NamespaceStatus", fields: &[(1, "phase", Str, Z), (2, "conditions", Msg(25), R)] },
    // 14
    Message { name: "io.k8s.api.core.v1.ObjectReference", fields: &[(1, "kind", Str, Z), (2, "namespace", Str, Z), (3, "name", Str, Z), (4, "uid", Str, Z), (5, "apiVersion", Str, Z), (6, "resourceVersion", Str, Z), (7, "fieldPath", Str, Z)] },
    // 15
    Message { name: "io.k8s.api.core.v1.LocalObjectReference", fields: &[(1, "name", Str, N)] },
    // 16
    Message { name: "io.k8s.api.core.v1.EventSource", fields: &[(1, "component", Str, Z), (2, "host", Str, Z)] },
    // 17
    Message { name: "io.k8s.api.core.v1.EventSeries", fields: &[(1, "count", I32, Z), (2, "lastObservedTime", Wk(Wk::MicroTime), N)] },
    // 18
    Message { name: "io.k8s.api.events.v1.EventSeries", fields: &[(1, "count", I32, N), (2, "lastObservedTime", Wk(Wk::MicroTime), N)] },
    // 19
    Message { name: "io.k8s.api.coordination.v1.LeaseSpec", fields: &[(1, "holderIdentity", Str, N), (2, "leaseDurationSeconds", I32, N), (3, "acquireTime", Wk(Wk::MicroTime), N), (4, "renewTime", Wk(Wk::MicroTime), N), (5, "leaseTransitions", I32, N), (6, "strategy", Str, N), (7, "preferredHolder", Str, N)] },
    // 20
    Message { name: "io.k8s.api.apps.v1.DeploymentSpec", fields: &[(1, "replicas", I32, N), (2, "selector", Msg(26), N), (3, "template", Msg(27), N), (4, "strategy", Msg(28), N), (5, "minReadySeconds", I32, Z), (6, "revisionHistoryLimit", I32, N), (7, "paused", Bool, Z), (9, "progressDeadlineSeconds", I32, N)] },
    // 21
    Message { name: "io.k8s.api.apps.v1.DeploymentStatus", fields: &[(1, "observedGeneration", I64, Z), (2, "replicas", I32, Z), (3, "updatedReplicas", I32, Z), (4, "availableReplicas", I32, Z), (5, "unavailableReplicas", I32, Z), (6, "conditions", Msg(29), R), (7, "readyReplicas", I32, Z), (8, "collisionCount", I32, Z), (9, "terminatingReplicas", I32, N)] },
    // 22
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.Preconditions", fields: &[(1, "uid", Str, N), (2, "resourceVersion", Str, N)] },
    // 23
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.OwnerReference", fields: &[(1, "kind", Str, N), (3, "name", Str, N), (4, "uid", Str, N), (5, "apiVersion", Str, N), (6, "controller", Bool, N), (7, "blockOwnerDeletion", Bool, N)] },
    // 24
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry", fields: &[(1, "manager", Str, Z), (2, "operation", Str, Z), (3, "apiVersion", Str, Z), (4, "time", Wk(Wk::Time), N), (6, "fieldsType", Str, Z), (7, "fieldsV1", Wk(Wk::Raw), N), (8, "subresource", Str, Z)] },
    // 25
    Message { name: "io.k8s.api.core.v1.NamespaceCondition", fields: &[(1, "type", Str, N), (2, "status", Str, N), (4, "lastTransitionTime", Wk(Wk::Time), N), (5, "reason", Str, Z), (6, "message", Str, Z)] },
    // 26
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector", fields: &[(1, "matchLabels", MapStr, N), (2, "matchExpressions", Msg(30), R)] },
    // 27
    Message { name: "io.k8s.api.core.v1.PodTemplateSpec", fields: &[(1, "metadata", Msg(11), N), (2, "spec", Msg(31), N)] },
    // 28
    Message { name: "io.k8s.api.apps.v1.DeploymentStrategy", fields: &[(1, "type", Str, Z), (2, "rollingUpdate", Msg(32), N)] },
    // 29
    Message { name: "io.k8s.api.apps.v1.DeploymentCondition", fields: &[(1, "type", Str, Z), (2, "status", Str, Z), (4, "reason", Str, Z), (5, "message", Str, Z), (6, "lastUpdateTime", Wk(Wk::Time), N), (7, "lastTransitionTime", Wk(Wk::Time), N)] },
    // 30
    Message { name: "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement", fields: &[(1, "key", Str, N), (2, "operator", Str, N), (3, "values", Str, R)] },
    // 31
    Message { name: "io.k8s.api.core.v1.PodSpec", fields: &[(1, "volumes", Msg(33), R), (2, "containers", Msg(34), R), (3, "restartPolicy", Str, Z), (4, "terminationGracePeriodSeconds", I64, N), (5, "activeDeadlineSeconds", I64, N), (6, "dnsPolicy", Str, Z), (7, "nodeSelector", MapStr, N), (8, "serviceAccountName", Str, Z), (9, "serviceAccount", Str, Z), (10, "nodeName", Str, Z), (11, "hostNetwork", Bool, Z), (12, "hostPID", Bool, Z), (13, "hostIPC", Bool, Z), (14, "securityContext", Msg(36), N), (15, "imagePullSecrets", Msg(15), R), (16, "hostname", Str, Z), (17, "subdomain", Str, Z), (18, "affinity", Msg(37), N), (19, "schedulerName", Str, Z), (20, "initContainers", Msg(34), R), (21, "automountServiceAccountToken", Bool, N), (22, "tolerations", Msg(38), R), (23, "hostAliases", Msg(39), R), (24, "priorityClassName", Str, Z), (25, "priority", I32, N), (26, "dnsConfig", Msg(40), N), (27, "shareProcessNamespace", Bool, N), (28, "readinessGates", Msg(41), R), (29, "runtimeClassName", Str, N), (30, "enableServiceLinks", Bool, N), (31, "preemptionPolicy", Str, N), (32, "overhead", MapWk(Wk::Quantity), N), (33, "topologySpreadConstraints", Msg(42), R), (34, "ephemeralContainers", Msg(35), R), (35, "setHostnameAsFQDN", Bool, N), (36, "os", Msg(43), N), (37, "hostUsers", Bool, N), (38, "schedulingGates", Msg(44), R), (39, "resourceClaims", Msg(45), R), (40, "resources", Msg(46), N), (41, "hostnameOverride", Str, N), (42, "workloadRef", Msg(47), N)] },
    // 32
    Message { name: "io.k8s.api.apps.v1.RollingUpdateDeployment", fields: &[(1, "maxUnavailable", Wk(Wk::IntOrString), N), (2, "maxSurge", Wk(Wk::IntOrString), N)] },
    // 33
    Message { name: "io.k8s.api.core.v1.Volume", fields: &[(1, "name", Str, N), (2, "", Msg(48), I)] },
    // 34
    Message { name: "io.k8s.api.core.v1.Container", fields: &[(1, "name", Str, N), (2, "image", Str, Z), (3, "command", Str, R), (4, "args", Str, R), (5, "workingDir", Str, Z), (6, "ports", Msg(49), R), (7, "env", Msg(51), R), (8, "resources", Msg(46), N), (9, "volumeMounts", Msg(54), R), (10, "livenessProbe", Msg(56), N), (11, "readinessProbe", Msg(56), N), (12, "lifecycle", Msg(57), N), (13, "terminationMessagePath", Str, Z), (14, "imagePullPolicy", Str, Z), (15, "securityContext", Msg(58), N), (16, "stdin", Bool, Z), (17, "stdinOnce", Bool, Z), (18, "tty", Bool, Z), (19, "envFrom", Msg(50), R), (20, "terminationMessagePolicy", Str, Z), (21, "volumeDevices", Msg(55), R), (22, "startupProbe", Msg(56), N), (23, "resizePolicy", Msg(52), R), (24, "restartPolicy", Str, N), (25, "restartPolicyRules", Msg(53), R)] },
    // 35
    Message { name: "io.k8s.api.core.v1.EphemeralContainer", fields: &[(1, "", Msg(59), I), (2, "targetContainerName", Str, Z)] },
    // 36
    Message { name: "io.k8s.api.core.v1.PodSecurityContext", fields: &[(1, "seLinuxOptions", Msg(60), N), (2, "runAsUser", I64, N), (3, "runAsNonRoot", Bool, N), (4, "supplementalGroups", I64, R), (5, "fsGroup", I64, N), (6, "runAsGroup", I64, N), (7, "sysctls", Msg(62), R), (8, "windowsOptions", Msg(61), N), (9, "fsGroupChangePolicy", Str, N), (10, "seccompProfile", Msg(63), N), (11, "appArmorProfile", Msg(64), N), (12, "supplementalGroupsPolicy", Str, N), (13, "seLinuxChangePolicy", Str, N)] },
    // 37
    Message { name: "io.k8s.api.core.v1.Affinity", fields: &[(1, "nodeAffinity", Msg(65), N), (2, "podAffinity", Msg(66), N), (3, "podAntiAffinity", Msg(67), N)] },
    // 38
    Message { name: "io.k8s.api.core.v1.Toleration", fields: &[(1, "key", Str, Z), (2, "operator", Str, Z), (3, "value", Str, Z), (4, "effect", Str, Z), (5, "tolerationSeconds", I64, N)] },
    // 39
    Message { name: "io.k8s.api.core.v1.HostAlias", fields: &[(1, "ip", Str, N), (2, "hostnames", Str, R)] },
    // 40
    Message { name: "io.k8s.api.core.v1.PodDnsConfig", fields: &[(1, "nameservers", Str, R), (2, "searches", Str, R), (3, "options", Msg(68), R)] },
    // 41
    Message { name: "io.k8s.api.core.v1.PodReadinessGate", fields: &[(1, "conditionType", Str, N)] },
    // 42
    Message { name: "io.k8s.api.core.v1.TopologySpreadConstraint", fields: &[(1, "maxSkew", I32, N), (2, "topologyKey", Str, N), (3, "whenUnsatisfiable", Str, N), (4, "labelSelector", Msg(26), N), (5, "minDomains", I32, N), (6, "nodeAffinityPolicy", Str, N), (7, "nodeTaintsPolicy", Str, N), (8, "matchLabelKeys", Str, R)] },
    // 43
    Message { name: "io.k8s.api.core.v1.PodOs", fields: &[(1, "name", Str, N)] },
    // 44
    Message { name: "io.k8s.api.core.v1.PodSchedulingGate", fields: &[(1, "name", Str, N)] },
    // 45
    Message { name: "io.k8s.api.core.v1.PodResourceClaim", fields: &[(1, "name", Str, N), (3, "resourceClaimName", Str, N), (4, "resourceClaimTemplateName", Str, N)] },
    // 46
    Message { name: "io.k8s.api.core.v1.ResourceRequirements", fields: &[(1, "limits", MapWk(Wk::Quantity), N), (2, "requests", MapWk(Wk::Quantity), N), (3, "claims", Msg(69), R)] },
    // 47
    Message { name: "io.k8s.api.core.v1.WorkloadReference", fields: &[(1, "name", Str, N), (2, "podGroup", Str, N), (3, "podGroupReplicaKey", Str, Z)] },
    // 48
    Message { name: "io.k8s.api.core.v1.VolumeSource", fields: &[(1, "hostPath", Msg(70), N), (2, "emptyDir", Msg(71), N), (3, "gcePersistentDisk", Msg(72), N), (4, "awsElasticBlockStore", Msg(73), N), (5, "gitRepo", Msg(74), N), (6, "secret", Msg(75), N), (7, "nfs", Msg(76), N), (8, "iscsi", Msg(77), N), (9, "glusterfs", Msg(78), N), (10, "persistentVolumeClaim", Msg(79), N), (11, "rbd", Msg(80), N), (12, "flexVolume", Msg(81), N), (13, "cinder", Msg(82), N), (14, "cephfs", Msg(83), N), (15, "flocker", Msg(84), N), (16, "downwardAPI", Msg(85), N), (17, "fc", Msg(86), N), (18, "azureFile", Msg(87), N), (19, "configMap", Msg(88), N), (20, "vsphereVolume", Msg(89), N), (21, "quobyte", Msg(90), N), (22, "azureDisk", Msg(91), N), (23, "photonPersistentDisk", Msg(92), N), (24, "portworxVolume", Msg(94), N), (25, "scaleIO", Msg(95), N), (26, "projected", Msg(93), N), (27, "storageos", Msg(96), N), (28, "csi", Msg(97), N), (29, "ephemeral", Msg(98), N), (30, "image", Msg(99), N)] },
    // 49
    Message { name: "io.k8s.api.core.v1.ContainerPort", fields: &[(1, "name", Str, Z), (2, "hostPort", I32, Z), (3, "containerPort", I32, N), (4, "protocol", Str, Z), (5, "hostIP", Str, Z)] },
    // 50
    Message { name: "io.k8s.api.core.v1.EnvFromSource", fields: &[(1, "prefix", Str, Z), (2, "configMapRef", Msg(100), N), (3, "secretRef", Msg(101), N)] },
    // 51
    Message { name: "io.k8s.api.core.v1.EnvVar", fields: &[(1, "name", Str, N), (2, "value", Str, Z), (3, "valueFrom", Msg(102), N)] },
    // 52
    Message { name: "io.k8s.api.core.v1.ContainerResizePolicy", fields: &[(1, "resourceName", Str, N), (2, "restartPolicy", Str, N)] },
    // 53
    Message { name: "io.k8s.api.core.v1.ContainerRestartRule", fields: &[(1, "action", Str, N), (2, "exitCodes", Msg(103), N)] },
    // 54
    Message { name: "io.k8s.api.core.v1.VolumeMount", fields: &[(1, "name", Str, N), (2, "readOnly", Bool, Z), (3, "mountPath", Str, N), (4, "subPath", Str, Z), (5, "mountPropagation", Str, N), (6, "subPathExpr", Str, Z), (7, "recursiveReadOnly", Str, N)] },
    // 55
    Message { name: "io.k8s.api.core.v1.VolumeDevice", fields: &[(1, "name", Str, N), (2, "devicePath", Str, N)] },
    // 56
    Message { name: "io.k8s.api.core.v1.Probe", fields: &[(1, "", Msg(104), I), (2, "initialDelaySeconds", I32, Z), (3, "timeoutSeconds", I32, Z), (4, "periodSeconds", I32, Z), (5, "successThreshold", I32, Z), (6, "failureThreshold", I32, Z), (7, "terminationGracePeriodSeconds", I64, N)] },
    // 57
    Message { name: "io.k8s.api.core.v1.Lifecycle", fields: &[(1, "postStart", Msg(105), N), (2, "preStop", Msg(105), N), (3, "stopSignal", Str, Z)] },
    // 58
    Message { name: "io.k8s.api.core.v1.SecurityContext", fields: &[(1, "capabilities", Msg(106), N), (2, "privileged", Bool, N), (3, "seLinuxOptions", Msg(60), N), (4, "runAsUser", I64, N), (5, "runAsNonRoot", Bool, N), (6, "readOnlyRootFilesystem", Bool, N), (7, "allowPrivilegeEscalation", Bool, N), (8, "runAsGroup", I64, N), (9, "procMount", Str, N), (10, "windowsOptions", Msg(61), N), (11, "seccompProfile", Msg(63), N), (12, "appArmorProfile", Msg(64), N)] },
    // 59
    Message { name: "io.k8s.api.core.v1.EphemeralContainerCommon", fields: &[(1, "name", Str, N), (2, "image", Str, Z), (3, "command", Str, R), (4, "args", Str, R), (5, "workingDir", Str, Z), (6, "ports", Msg(49), R), (7, "env", Msg(51), R), (8, "resources", Msg(46), N), (9, "volumeMounts", Msg(54), R), (10, "livenessProbe", Msg(56), N), (11, "readinessProbe", Msg(56), N), (12, "lifecycle", Msg(57), N), (13, "terminationMessagePath", Str, Z), (14, "imagePullPolicy", Str, Z), (15, "securityContext", Msg(58), N), (16, "stdin", Bool, Z), (17, "stdinOnce", Bool, Z), (18, "tty", Bool, Z), (19, "envFrom", Msg(50), R), (20, "terminationMessagePolicy", Str, Z), (21, "volumeDevices", Msg(55), R), (22, "startupProbe", Msg(56), N), (23, "resizePolicy", Msg(52), R), (24, "restartPolicy", Str, N), (25, "restartPolicyRules", Msg(53), R)] },
    // 60
    Message { name: "io.k8s.api.core.v1.SeLinuxOptions", fields: &[(1, "user", Str, Z), (2, "role", Str, Z), (3, "type", Str, Z), (4, "level", Str, Z)] },
    // 61
    Message { name: "io.k8s.api.core.v1.WindowsSecurityContextOptions", fields: &[(1, "gmsaCredentialSpecName", Str, N), (2, "gmsaCredentialSpec", Str, N), (3, "runAsUserName", Str, N), (4, "hostProcess", Bool, N)] },
    // 62
    Message { name: "io.k8s.api.core.v1.Sysctl", fields: &[(1, "name", Str, N), (2, "value", Str, N)] },
    // 63
    Message { name: "io.k8s.api.core.v1.SeccompProfile", fields: &[(1, "type", Str, N), (2, "localhostProfile", Str, N)] },
    // 64
    Message { name: "io.k8s.api.core.v1.AppArmorProfile", fields: &[(1, "type", Str, N), (2, "localhostProfile", Str, N)] },
    // 65
    Message { name: "io.k8s.api.core.v1.NodeAffinity", fields: &[(1, "requiredDuringSchedulingIgnoredDuringExecution", Msg(107), N), (2, "preferredDuringSchedulingIgnoredDuringExecution", Msg(108), R)] },
    // 66
    Message { name: "io.k8s.api.core.v1.PodAffinity", fields: &[(1, "requiredDuringSchedulingIgnoredDuringExecution", Msg(109), R), (2, "preferredDuringSchedulingIgnoredDuringExecution", Msg(110), R)] },
    // 67
    Message { name: "io.k8s.api.core.v1.PodAntiAffinity", fields: &[(1, "requiredDuringSchedulingIgnoredDuringExecution", Msg(109), R), (2, "preferredDuringSchedulingIgnoredDuringExecution", Msg(110), R)] },
    // 68
    Message { name: "io.k8s.api.core.v1.PodDnsConfigOption", fields: &[(1, "name", Str, Z), (2, "value", Str, N)] },
    // 69
    Message { name: "io.k8s.api.core.v1.ResourceClaim", fields: &[(1, "name", Str, N), (2, "request", Str, Z)] },
    // 70
    Message { name: "io.k8s.api.core.v1.HostPathVolumeSource", fields: &[(1, "path", Str, N), (2, "type", Str, N)] },
    // 71
    Message { name: "io.k8s.api.core.v1.EmptyDirVolumeSource", fields: &[(1, "medium", Str, Z), (2, "sizeLimit", Wk(Wk::Quantity), N)] },
    // 72
    Message { name: "io.k8s.api.core.v1.GcePersistentDiskVolumeSource", fields: &[(1, "pdName", Str, N), (2, "fsType", Str, Z), (3, "partition", I32, Z), (4, "readOnly", Bool, Z)] },
    // 73
    Message { name: "io.k8s.api.core.v1.AwsElasticBlockStoreVolumeSource", fields: &[(1, "volumeID", Str, N), (2, "fsType", Str, Z), (3, "partition", I32, Z), (4, "readOnly", Bool, Z)] },
    // 74
    Message { name: "io.k8s.api.core.v1.GitRepoVolumeSource", fields: &[(1, "repository", Str, N), (2, "revision", Str, Z), (3, "directory", Str, Z)] },
    // 75
    Message { name: "io.k8s.api.core.v1.SecretVolumeSource", fields: &[(1, "secretName", Str, Z), (2, "items", Msg(111), R), (3, "defaultMode", I32, N), (4, "optional", Bool, N)] },
    // 76
    Message { name: "io.k8s.api.core.v1.NfsVolumeSource", fields: &[(1, "server", Str, N), (2, "path", Str, N), (3, "readOnly", Bool, Z)] },
    // 77
    Message { name: "io.k8s.api.core.v1.IscsiVolumeSource", fields: &[(1, "targetPortal", Str, N), (2, "iqn", Str, N), (3, "lun", I32, N), (4, "iscsiInterface", Str, Z), (5, "fsType", Str, Z), (6, "readOnly", Bool, Z), (7, "portals", Str, R), (8, "chapAuthDiscovery", Bool, Z), (10, "secretRef", Msg(15), N), (11, "chapAuthSession", Bool, Z), (12, "initiatorName", Str, N)] },
    // 78
    Message { name: "io.k8s.api.core.v1.GlusterfsVolumeSource", fields: &[(1, "endpoints", Str, N), (2, "path", Str, N), (3, "readOnly", Bool, Z)] },
    // 79
    Message { name: "io.k8s.api.core.v1.PersistentVolumeClaimVolumeSource", fields: &[(1, "claimName", Str, N), (2, "readOnly", Bool, Z)] },
    // 80
    Message { name: "io.k8s.api.core.v1.RbdVolumeSource", fields: &[(1, "monitors", Str, R), (2, "image", Str, N), (3, "fsType", Str, Z), (4, "pool", Str, Z), (5, "user", Str, Z), (6, "keyring", Str, Z), (7, "secretRef", Msg(15), N), (8, "readOnly", Bool, Z)] },
    // 81
    Message { name: "io.k8s.api.core.v1.FlexVolumeSource", fields: &[(1, "driver", Str, N), (2, "fsType", Str, Z), (3, "secretRef", Msg(15), N), (4, "readOnly", Bool, Z), (5, "options", MapStr, N)] },
    // 82
    Message { name: "io.k8s.api.core.v1.CinderVolumeSource", fields: &[(1, "volumeID", Str, N), (2, "fsType", Str, Z), (3, "readOnly", Bool, Z), (4, "secretRef", Msg(15), N)] },
    // 83
    Message { name: "io.k8s.api.core.v1.CephFsVolumeSource", fields: &[(1, "monitors", Str, R), (2, "path", Str, Z), (3, "user", Str, Z), (4, "secretFile", Str, Z), (5, "secretRef", Msg(15), N), (6, "readOnly", Bool, Z)] },
    // 84
    Message { name: "io.k8s.api.core.v1.FlockerVolumeSource", fields: &[(1, "datasetName", Str, Z), (2, "datasetUUID", Str, Z)] },
    // 85
    Message { name: "io.k8s.api.core.v1.DownwardAPIVolumeSource", fields: &[(1, "items", Msg(112), R), (2, "defaultMode", I32, N)] },
    // 86
    Message { name: "io.k8s.api.core.v1.FcVolumeSource", fields: &[(1, "targetWWNs", Str, R), (2, "lun", I32, Z), (3, "fsType", Str, Z), (4, "readOnly", Bool, Z), (5, "wwids", Str, R)] },
    // 87
    Message { name: "io.k8s.api.core.v1.AzureFileVolumeSource", fields: &[(1, "secretName", Str, N), (2, "shareName", Str, N), (3, "readOnly", Bool, Z)] },
    // 88
    Message { name: "io.k8s.api.core.v1.ConfigMapVolumeSource", fields: &[(1, "", Msg(15), I), (2, "items", Msg(111), R), (3, "defaultMode", I32, N), (4, "optional", Bool, N)] },
    // 89
    Message { name: "io.k8s.api.core.v1.VsphereVirtualDiskVolumeSource", fields: &[(1, "volumePath", Str, N), (2, "fsType", Str, Z), (3, "storagePolicyName", Str, Z), (4, "storagePolicyID", Str, Z)] },
    // 90
    Message { name: "io.k8s.api.core.v1.QuobyteVolumeSource", fields: &[(1, "registry", Str, N), (2, "volume", Str, N), (3, "readOnly", Bool, Z), (4, "user", Str, Z), (5, "group", Str, Z), (6, "tenant", Str, Z)] },
    // 91
    Message { name: "io.k8s.api.core.v1.AzureDiskVolumeSource", fields: &[(1, "diskName", Str, N), (2, "diskURI", Str, N), (3, "cachingMode", Str, Z), (4, "fsType", Str, Z), (5, "readOnly", Bool, Z), (6, "kind", Str, Z)] },
    // 92
    Message { name: "io.k8s.api.core.v1.PhotonPersistentDiskVolumeSource", fields: &[(1, "pdID", Str, N), (2, "fsType", Str, Z)] },
    // 93
    Message { name: "io.k8s.api.core.v1.ProjectedVolumeSource", fields: &[(1, "sources", Msg(113), R), (2, "defaultMode", I32, N)] },
    // 94
    Message { name: "io.k8s.api.core.v1.PortworxVolumeSource", fields: &[(1, "volumeID", Str, N), (2, "fsType", Str, Z), (3, "readOnly", Bool, Z)] },
    // 95
    Message { name: "io.k8s.api.core.v1.ScaleIoVolumeSource", fields: &[(1, "gateway", Str, N), (2, "system", Str, N), (3, "secretRef", Msg(15), N), (4, "sslEnabled", Bool, Z), (5, "protectionDomain", Str, Z), (6, "storagePool", Str, Z), (7, "storageMode", Str, Z), (8, "volumeName", Str, Z), (9, "fsType", Str, Z), (10, "readOnly", Bool, Z)] },
    // 96
    Message { name: "io.k8s.api.core.v1.StorageOsVolumeSource", fields: &[(1, "volumeName", Str, Z), (2, "volumeNamespace", Str, Z), (3, "fsType", Str, Z), (4, "readOnly", Bool, Z), (5, "secretRef", Msg(15), N)] },
    // 97
    Message { name: "io.k8s.api.core.v1.CSIVolumeSource", fields: &[(1, "driver", Str, N), (2, "readOnly", Bool, N), (3, "fsType", Str, N), (4, "volumeAttributes", MapStr, N), (5, "nodePublishSecretRef", Msg(15), N)] },
    // 98
    Message { name: "io.k8s.api.core.v1.EphemeralVolumeSource", fields: &[(1, "volumeClaimTemplate", Msg(114), N)] },
    // 99
    Message { name: "io.k8s.api.core.v1.ImageVolumeSource", fields: &[(1, "reference", Str, Z), (2, "pullPolicy", Str, Z)] },
    // 100
    Message { name: "io.k8s.api.core.v1.ConfigMapEnvSource", fields: &[(1, "", Msg(15), I), (2, "optional", Bool, N)] },
    // 101
    Message { name: "io.k8s.api.core.v1.SecretEnvSource", fields: &[(1, "", Msg(15), I), (2, "optional", Bool, N)] },
    // 102
    Message { name: "io.k8s.api.core.v1.EnvVarSource", fields: &[(1, "fieldRef", Msg(115), N), (2, "resourceFieldRef", Msg(116), N), (3, "configMapKeyRef", Msg(117), N), (4, "secretKeyRef", Msg(118), N), (5, "fileKeyRef", Msg(119), N)] },
    // 103
    Message { name: "io.k8s.api.core.v1.ContainerRestartRuleOnExitCodes", fields: &[(1, "operator", Str, N), (2, "values", I32, R)] },
    // 104
    Message { name: "io.k8s.api.core.v1.ProbeHandler", fields: &[(1, "exec", Msg(120), N), (2, "httpGet", Msg(121), N), (3, "tcpSocket", Msg(122), N), (4, "grpc", Msg(123), N)] },
    // 105
    Message { name: "io.k8s.api.core.v1.LifecycleHandler", fields: &[(1, "exec", Msg(120), N), (2, "httpGet", Msg(121), N), (3, "tcpSocket", Msg(122), N), (4, "sleep", Msg(124), N)] },
    // 106
    Message { name: "io.k8s.api.core.v1.Capabilities", fields: &[(1, "add", Str, R), (2, "drop", Str, R)] },
    // 107
    Message { name: "io.k8s.api.core.v1.NodeSelector", fields: &[(1, "nodeSelectorTerms", Msg(125), R)] },
    // 108
    Message { name: "io.k8s.api.core.v1.PreferredSchedulingTerm", fields: &[(1, "weight", I32, N), (2, "preference", Msg(125), N)] },
    // 109
    Message { name: "io.k8s.api.core.v1.PodAffinityTerm", fields: &[(1, "labelSelector", Msg(26), N), (2, "namespaces", Str, R), (3, "topologyKey", Str, N), (4, "namespaceSelector", Msg(26), N), (5, "matchLabelKeys", Str, R), (6, "mismatchLabelKeys", Str, R)] },
    // 110
    Message { name: "io.k8s.api.core.v1.WeightedPodAffinityTerm", fields: &[(1, "weight", I32, N), (2, "podAffinityTerm", Msg(109), N)] },
    // 111
    Message { name: "io.k8s.api.core.v1.KeyToPath", fields: &[(1, "key", Str, N), (2, "path", Str, N), (3, "mode", I32, N)] },
    // 112
    Message { name: "io.k8s.api.core.v1.DownwardAPIVolumeFile", fields: &[(1, "path", Str, N), (2, "fieldRef", Msg(115), N), (3, "resourceFieldRef", Msg(116), N), (4, "mode", I32, N)] },
    // 113
    Message { name: "io.k8s.api.core.v1.VolumeProjection", fields: &[(1, "secret", Msg(126), N), (2, "downwardAPI", Msg(127), N), (3, "configMap", Msg(128), N), (4, "serviceAccountToken", Msg(129), N), (5, "clusterTrustBundle", Msg(130), N), (6, "podCertificate", Msg(131), N)] },
    // 114
    Message { name: "io.k8s.api.core.v1.PersistentVolumeClaimTemplate", fields: &[(1, "metadata", Msg(11), N), (2, "spec", Msg(132), N)] },
    // 115
    Message { name: "io.k8s.api.core.v1.ObjectFieldSelector", fields: &[(1, "apiVersion", Str, Z), (2, "fieldPath", Str, N)] },
    // 116
    Message { name: "io.k8s.api.core.v1.ResourceFieldSelector", fields: &[(1, "containerName", Str, Z), (2, "resource", Str, N), (3, "divisor", Wk(Wk::Quantity), N)] },
    // 117
    Message { name: "io.k8s.api.core.v1.ConfigMapKeySelector", fields: &[(1, "", Msg(15), I), (2, "key", Str, N), (3, "optional", Bool, N)] },
    // 118
    Message { name: "io.k8s.api.core.v1.SecretKeySelector", fields: &[(1, "", Msg(15), I), (2, "key", Str, N), (3, "optional", Bool, N)] },
    // 119
    Message { name: "io.k8s.api.core.v1.FileKeySelector", fields: &[(1, "volumeName", Str, N), (2, "path", Str, N), (3, "key", Str, N), (4, "optional", Bool, N)] },
    // 120
    Message { name: "io.k8s.api.core.v1.ExecAction", fields: &[(1, "command", Str, R)] },
    // 121
    Message { name: "io.k8s.api.core.v1.HttpGetAction", fields: &[(1, "path", Str, Z), (2, "port", Wk(Wk::IntOrString), N), (3, "host", Str, Z), (4, "scheme", Str, Z), (5, "httpHeaders", Msg(133), R)] },
    // 122
    Message { name: "io.k8s.api.core.v1.TcpSocketAction", fields: &[(1, "port", Wk(Wk::IntOrString), N), (2, "host", Str, Z)] },
    // 123
    Message { name: "io.k8s.api.core.v1.GrpcAction", fields: &[(1, "port", I32, N), (2, "service", Str, N)] },
    // 124
    Message { name: "io.k8s.api.core.v1.SleepAction", fields: &[(1, "seconds", I64, N)] },
    // 125
    Message { name: "io.k8s.api.core.v1.NodeSelectorTerm", fields: &[(1, "matchExpressions", Msg(134), R), (2, "matchFields", Msg(134), R)] },
    // 126
    Message { name: "io.k8s.api.core.v1.SecretProjection", fields: &[(1, "", Msg(15), I), (2, "items", Msg(111), R), (4, "optional", Bool, N)] },
    // 127
    Message { name: "io.k8s.api.core.v1.DownwardAPIProjection", fields: &[(1, "items", Msg(112), R)] },
    // 128
    Message { name: "io.k8s.api.core.v1.ConfigMapProjection", fields: &[(1, "", Msg(15), I), (2, "items", Msg(111), R), (4, "optional", Bool, N)] },
    // 129
    Message { name: "io.k8s.api.core.v1.ServiceAccountTokenProjection", fields: &[(1, "audience", Str, Z), (2, "expirationSeconds", I64, N), (3, "path", Str, N)] },
    // 130
    Message { name: "io.k8s.api.core.v1.ClusterTrustBundleProjection", fields: &[(1, "name", Str, N), (2, "signerName", Str, N), (3, "labelSelector", Msg(26), N), (4, "path", Str, N), (5, "optional", Bool, N)] },
    // 131
    Message { name: "io.k8s.api.core.v1.PodCertificateProjection", fields: &[(1, "signerName", Str, N), (2, "keyType", Str, N), (3, "maxExpirationSeconds", I32, N), (4, "credentialBundlePath", Str, Z), (5, "keyPath", Str, Z), (6, "certificateChainPath", Str, Z), (7, "userAnnotations", MapStr, N)] },
    // 132
    Message { name: "io.k8s.api.core.v1.PersistentVolumeClaimSpec", fields: &[(1, "accessModes", Str, R), (2, "resources", Msg(135), N), (3, "volumeName", Str, Z), (4, "selector", Msg(26), N), (5, "storageClassName", Str, N), (6, "volumeMode", Str, N), (7, "dataSource", Msg(136), N), (8, "dataSourceRef", Msg(137), N), (9, "volumeAttributesClassName", Str, N)] },
    // 133
    Message { name: "io.k8s.api.core.v1.HttpHeader", fields: &[(1, "name", Str, N), (2, "value", Str, N)] },
    // 134
    Message { name: "io.k8s.api.core.v1.NodeSelectorRequirement", fields: &[(1, "key", Str, N), (2, "operator", Str, N), (3, "values", Str, R)] },
    // 135
    Message { name: "io.k8s.api.core.v1.VolumeResourceRequirements", fields: &[(1, "limits", MapWk(Wk::Quantity), N), (2, "requests", MapWk(Wk::Quantity), N)] },
    // 136
    Message { name: "io.k8s.api.core.v1.TypedLocalObjectReference", fields: &[(1, "apiGroup", Str, N), (2, "kind", Str, N), (3, "name", Str, N)] },
    // 137
    Message { name: "io.k8s.api.core.v1.TypedObjectReference", fields: &[(1, "apiGroup", Str, N), (2, "kind", Str, N), (3, "name", Str, N), (4, "namespace", Str, N)] },
];

/// The message index of the root object for an apiVersion and kind, if it is decoded.
pub(super) fn root(api_version: &str, kind: &str) -> Option<usize> {
    match (api_version, kind) {
        ("v1", "Namespace") => Some(0),
        ("v1", "ConfigMap") => Some(1),
        ("v1", "Secret") => Some(2),
        ("v1", "ServiceAccount") => Some(3),
        ("v1", "Event") => Some(4),
        ("events.k8s.io/v1", "Event") => Some(5),
        ("coordination.k8s.io/v1", "Lease") => Some(6),
        ("apps/v1", "Deployment") => Some(7),
        ("v1", "DeleteOptions") => Some(8),
        ("meta.k8s.io/v1", "DeleteOptions") => Some(8),
        ("v1", "CreateOptions") => Some(9),
        ("meta.k8s.io/v1", "CreateOptions") => Some(9),
        ("v1", "UpdateOptions") => Some(10),
        ("meta.k8s.io/v1", "UpdateOptions") => Some(10),
        _ => None,
    }
}

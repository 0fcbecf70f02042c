//! The Job controller (pkg/controller/job) and the TTL-after-finished controller: Pods up to
//! `parallelism` until `completions` succeeded (NonIndexed or Indexed), `backoffLimit` failed
//! Pods fail the Job, `suspend` stops it, and the status (startTime, active, ready, succeeded,
//! failed, terminating, completedIndexes, completionTime, conditions) is written as 1.33 writes
//! it: `SuccessCriteriaMet` then `Complete`, or `FailureTarget` then `Failed`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    Actor, CondStyle, Kind, Sim, i64_at, is_active, is_deleting, is_ready, owner_ref, phase, set_condition,
    str_at,
};
use crate::meta::meta_str;
use crate::status::ApiResult;

const COMPONENT: &str = "job-controller";
const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

fn finished(job: &Value) -> bool {
    ["Complete", "Failed"].iter().any(|t| {
        super::condition(job, t)
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("True")
    })
}

/// Indexes as the status lists them: `0-2,4`.
fn compress_indexes(set: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = vec![];
    let mut iter = set.iter().peekable();
    while let Some(&first) = iter.next() {
        let mut last = first;
        while let Some(&&n) = iter.peek() {
            if n != last + 1 {
                break;
            }
            last = n;
            iter.next();
        }
        out.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    out.join(",")
}

fn pod_index(pod: &Value) -> Option<i64> {
    pod.pointer("/metadata/annotations")
        .and_then(|a| a.get(INDEX_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

impl Sim {
    pub(super) async fn sync_job(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let Some(job) = self.get(Kind::Job, ns, name) else {
            return Ok(());
        };
        if is_deleting(&job) {
            return Ok(());
        }
        let mut jv = (*job).clone();
        jv["apiVersion"] = json!("batch/v1");
        jv["kind"] = json!("Job");
        let job = Arc::new(jv);
        let who = Actor::controller(COMPONENT);
        if finished(&job) {
            return self.job_ttl(&job).await;
        }
        let uid = meta_str(&job, "uid").to_string();
        let pods = self.owned(Kind::Pod, ns, &uid);
        let active: Vec<&Arc<Value>> = pods.iter().filter(|p| is_active(p)).collect();
        let indexed = str_at(&job, "/spec/completionMode") == "Indexed";
        let completions = i64_at(&job, "/spec/completions");
        let parallelism = i64_at(&job, "/spec/parallelism").unwrap_or(1).max(0);
        let backoff_limit = i64_at(&job, "/spec/backoffLimit").unwrap_or(6);
        let suspended = job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
        let succeeded_pods: Vec<&Arc<Value>> = pods.iter().filter(|p| phase(p) == "Succeeded").collect();
        let failed_pods = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let mut succeeded_indexes: BTreeSet<i64> = BTreeSet::new();
        if indexed {
            // Indexes already recorded stay recorded, even when their Pods were deleted.
            for part in str_at(&job, "/status/completedIndexes")
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                if let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) {
                    succeeded_indexes.extend(a..=b.min(a + 100_000));
                }
            }
            succeeded_indexes.extend(succeeded_pods.iter().filter_map(|p| pod_index(p)));
        }
        let succeeded = if indexed {
            succeeded_indexes.len() as i64
        } else {
            (succeeded_pods.len() as i64).max(i64_at(&job, "/status/succeeded").unwrap_or(0))
        };
        let failed = failed_pods.max(i64_at(&job, "/status/failed").unwrap_or(0));
        let mut conds = super::conditions_of(&job);
        let mut completion_time = None;
        let mut involved_events: Vec<(&str, &str, String)> = vec![];

        let done = match completions {
            Some(c) => succeeded >= c,
            // A work queue: done once one Pod succeeded and none is running.
            None => succeeded > 0 && active.is_empty(),
        };
        if failed > backoff_limit {
            for p in &active {
                self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
            }
            let m = "Job has reached the specified backoff limit";
            set_condition(
                &mut conds,
                "FailureTarget",
                "True",
                Some("BackoffLimitExceeded"),
                Some(m),
                CondStyle::ProbeNow,
            );
            set_condition(
                &mut conds,
                "Failed",
                "True",
                Some("BackoffLimitExceeded"),
                Some(m),
                CondStyle::ProbeNow,
            );
            involved_events.push(("Warning", "BackoffLimitExceeded", m.to_string()));
        } else if done {
            for p in &active {
                self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
            }
            let m = "Reached expected number of succeeded pods";
            set_condition(
                &mut conds,
                "SuccessCriteriaMet",
                "True",
                Some("CompletionsReached"),
                Some(m),
                CondStyle::ProbeNow,
            );
            set_condition(
                &mut conds,
                "Complete",
                "True",
                Some("CompletionsReached"),
                Some(m),
                CondStyle::ProbeNow,
            );
            completion_time = Some(crate::meta::now());
            involved_events.push(("Normal", "Completed", "Job completed".to_string()));
        } else if suspended {
            for p in &active {
                self.delete(&Kind::Pod.gr(), p, json!({}), &who).await?;
            }
            set_condition(
                &mut conds,
                "Suspended",
                "True",
                Some("JobSuspended"),
                Some("Job suspended"),
                CondStyle::ProbeNow,
            );
        } else {
            if super::condition(&job, "Suspended")
                .and_then(|c| c.get("status"))
                .and_then(Value::as_str)
                == Some("True")
            {
                set_condition(
                    &mut conds,
                    "Suspended",
                    "False",
                    Some("JobResumed"),
                    Some("Job resumed"),
                    CondStyle::ProbeNow,
                );
            }
            let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
            let oref = owner_ref(&job, "batch/v1", "Job");
            let mut to_create: Vec<Option<i64>> = vec![];
            if indexed {
                let total = completions.unwrap_or(1);
                let running: BTreeSet<i64> = active.iter().filter_map(|p| pod_index(p)).collect();
                let room = (parallelism - active.len() as i64).max(0);
                to_create.extend(
                    (0..total)
                        .filter(|i| !succeeded_indexes.contains(i) && !running.contains(i))
                        .take(room as usize)
                        .map(Some),
                );
            } else {
                let want = match completions {
                    Some(c) => parallelism.min(c - succeeded),
                    None if succeeded > 0 => 0,
                    None => parallelism,
                };
                let n = (want - active.len() as i64).clamp(0, 500);
                to_create.extend((0..n).map(|_| None));
            }
            for idx in to_create {
                let generate = match idx {
                    Some(i) => format!("{name}-{i}-"),
                    None => format!("{name}-"),
                };
                let mut pod = super::pod_from_template(&template, oref.clone(), &generate);
                let labels = &mut pod["metadata"]["labels"];
                for (k, v) in [
                    ("batch.kubernetes.io/controller-uid", uid.as_str()),
                    ("batch.kubernetes.io/job-name", name),
                    ("controller-uid", uid.as_str()),
                    ("job-name", name),
                ] {
                    if labels.get(k).is_none() {
                        labels[k] = json!(v);
                    }
                }
                if let Some(i) = idx {
                    pod["metadata"]["annotations"][INDEX_ANNOTATION] = json!(i.to_string());
                    pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] =
                        json!(i.to_string());
                    pod["spec"]["hostname"] = json!(format!("{name}-{i}"));
                }
                match self.create(&Kind::Pod.gr(), ns, &pod, &who).await {
                    Ok(created) => {
                        let msg = format!("Created pod: {}", meta_str(&created, "name"));
                        self.event(&job, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                            .await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // Count again after what this sync changed.
        let pods = self.owned(Kind::Pod, ns, &uid);
        let active_now = pods.iter().filter(|p| is_active(p)).count() as i64;
        let ready_now = pods.iter().filter(|p| is_active(p) && is_ready(p)).count() as i64;
        let terminating = pods
            .iter()
            .filter(|p| is_deleting(p) && !matches!(phase(p), "Succeeded" | "Failed"))
            .count() as i64;
        let old = job.get("status").cloned().unwrap_or(json!({}));
        let mut status = json!({
            "startTime": old.get("startTime").cloned().unwrap_or_else(|| json!(crate::meta::now())),
            "ready": ready_now,
            "terminating": terminating,
            "uncountedTerminatedPods": {},
        });
        if suspended
            && old.get("startTime").is_none()
            && let Some(m) = status.as_object_mut()
        {
            m.remove("startTime");
        }
        for (k, v) in [
            ("active", active_now),
            ("succeeded", succeeded),
            ("failed", failed),
        ] {
            if v != 0 {
                status[k] = json!(v);
            }
        }
        if indexed && !succeeded_indexes.is_empty() {
            status["completedIndexes"] = json!(compress_indexes(&succeeded_indexes));
        }
        if let Some(t) = completion_time {
            status["completionTime"] = json!(t);
        }
        if !conds.is_empty() {
            status["conditions"] = json!(conds);
        }
        self.put_status(Kind::Job, &job, status, &who).await?;
        for (t, reason, msg) in involved_events {
            self.event(&job, t, reason, &msg, COMPONENT).await;
        }
        Ok(())
    }

    /// The TTL-after-finished controller: a finished Job with `ttlSecondsAfterFinished` is
    /// deleted (with its Pods, in the background) that long after it finished.
    async fn job_ttl(&mut self, job: &Value) -> ApiResult<()> {
        let Some(ttl) = i64_at(job, "/spec/ttlSecondsAfterFinished") else {
            return Ok(());
        };
        let finished_at = ["Complete", "Failed"]
            .iter()
            .filter_map(|t| super::condition(job, t))
            .filter_map(|c| c.get("lastTransitionTime").and_then(Value::as_str))
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
            .next()
            .unwrap_or_else(chrono::Utc::now);
        let expires = finished_at + chrono::Duration::seconds(ttl.max(0));
        let now = chrono::Utc::now();
        if expires > now {
            let wait = (expires - now).to_std().unwrap_or(Duration::from_secs(1));
            self.requeue_after(
                (
                    Kind::Job,
                    meta_str(job, "namespace").to_string(),
                    meta_str(job, "name").to_string(),
                ),
                wait,
            );
            return Ok(());
        }
        self.delete(
            &Kind::Job.gr(),
            job,
            json!({"propagationPolicy": "Background"}),
            &Actor::controller("ttl-after-finished-controller"),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_compressed() {
        let s: BTreeSet<i64> = [0, 1, 2, 4, 6, 7].into_iter().collect();
        assert_eq!(compress_indexes(&s), "0-2,4,6-7");
        assert_eq!(compress_indexes(&BTreeSet::new()), "");
    }
}

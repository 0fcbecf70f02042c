//! The CronJob controller (pkg/controller/cronjob): a Job `<cronjob>-<minutes since the epoch>`
//! for the most recent missed schedule time, `concurrencyPolicy` (Allow, Forbid, Replace),
//! `suspend`, `startingDeadlineSeconds`, history limits, and the status (active,
//! lastScheduleTime, lastSuccessfulTime). Schedules are read in UTC (`timeZone` is not applied).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::cron::Schedule;
use super::{Actor, Kind, Sim, i64_at, is_deleting, owner_ref, str_at};
use crate::meta::meta_str;
use crate::status::ApiResult;

const COMPONENT: &str = "cronjob-controller";

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A Job's finished condition type, if finished.
fn job_finished(job: &Value) -> Option<&'static str> {
    ["Complete", "Failed"].into_iter().find(|t| {
        super::condition(job, t)
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("True")
    })
}

impl Sim {
    pub(super) async fn sync_cronjob(&mut self, ns: &str, name: &str) -> ApiResult<()> {
        let Some(cj) = self.get(Kind::CronJob, ns, name) else {
            return Ok(());
        };
        if is_deleting(&cj) {
            return Ok(());
        }
        let mut cv = (*cj).clone();
        cv["apiVersion"] = json!("batch/v1");
        cv["kind"] = json!("CronJob");
        let cj = Arc::new(cv);
        let who = Actor::controller(COMPONENT);
        let key = (Kind::CronJob, ns.to_string(), name.to_string());
        let uid = meta_str(&cj, "uid").to_string();
        let mut jobs = self.owned(Kind::Job, ns, &uid);
        jobs.sort_by(|a, b| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")));
        let schedule_text = str_at(&cj, "/spec/schedule").to_string();
        let schedule = match Schedule::parse(&schedule_text) {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("unparseable schedule: {schedule_text:?} : {e}");
                let rv = meta_str(&cj, "resourceVersion").to_string();
                let rkey = ("CronJob".to_string(), ns.to_string(), name.to_string());
                if self.reported_selectors.get(&rkey) != Some(&rv) {
                    self.reported_selectors.insert(rkey, rv);
                    self.event(&cj, "Warning", "UnparseableSchedule", &msg, COMPONENT)
                        .await;
                }
                return Ok(());
            }
        };
        let now = Utc::now();
        let mut last_schedule = str_at(&cj, "/status/lastScheduleTime").to_string();
        let earliest = parse_time(&last_schedule)
            .or_else(|| parse_time(meta_str(&cj, "creationTimestamp")))
            .unwrap_or(now);
        // The most recent schedule time not yet run (older missed ones are skipped, as the real
        // controller skips them).
        let mut due = None;
        let mut t = earliest;
        for _ in 0..100_000 {
            match schedule.next_after(t) {
                Some(n) if n <= now => {
                    due = Some(n);
                    t = n;
                }
                _ => break,
            }
        }
        let suspended = cj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
        let active: Vec<Arc<Value>> = jobs
            .iter()
            .filter(|j| job_finished(j).is_none() && !is_deleting(j))
            .cloned()
            .collect();
        if let (Some(at), false) = (due, suspended) {
            let deadline_missed = i64_at(&cj, "/spec/startingDeadlineSeconds")
                .is_some_and(|d| at + chrono::Duration::seconds(d) < now);
            let policy = str_at(&cj, "/spec/concurrencyPolicy");
            let job_name = format!("{name}-{}", at.timestamp() / 60);
            let exists = jobs.iter().any(|j| meta_str(j, "name") == job_name);
            if deadline_missed {
                let msg = format!("Missed scheduled time to start a job: {}", at.to_rfc3339());
                self.event(&cj, "Warning", "MissSchedule", &msg, COMPONENT).await;
                last_schedule = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            } else if !exists && (policy != "Forbid" || active.is_empty()) {
                if policy == "Replace" {
                    for j in &active {
                        self.delete(
                            &Kind::Job.gr(),
                            j,
                            json!({"propagationPolicy": "Background"}),
                            &who,
                        )
                        .await?;
                        let msg = format!("Deleted job {}", meta_str(j, "name"));
                        self.event(&cj, "Normal", "SuccessfulDelete", &msg, COMPONENT)
                            .await;
                    }
                }
                let tmpl = cj.pointer("/spec/jobTemplate").cloned().unwrap_or(json!({}));
                let scheduled = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
                let mut job = json!({
                    "metadata": {
                        "name": job_name,
                        "namespace": ns,
                        "ownerReferences": [owner_ref(&cj, "batch/v1", "CronJob")],
                    },
                    "spec": tmpl.get("spec").cloned().unwrap_or(json!({})),
                });
                if let Some(l) = tmpl.pointer("/metadata/labels") {
                    job["metadata"]["labels"] = l.clone();
                }
                let mut ann = tmpl
                    .pointer("/metadata/annotations")
                    .cloned()
                    .unwrap_or(json!({}));
                ann["batch.kubernetes.io/cronjob-scheduled-timestamp"] = json!(scheduled);
                job["metadata"]["annotations"] = ann;
                match self.create(&Kind::Job.gr(), ns, &job, &who).await {
                    Ok(_) => {
                        let msg = format!("Created job {job_name}");
                        self.event(&cj, "Normal", "SuccessfulCreate", &msg, COMPONENT)
                            .await;
                    }
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
                last_schedule = scheduled;
            } else if exists {
                last_schedule = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            }
        }
        // History limits.
        let jobs = {
            let mut j = self.owned(Kind::Job, ns, &uid);
            j.sort_by(|a, b| meta_str(a, "creationTimestamp").cmp(meta_str(b, "creationTimestamp")));
            j
        };
        for (kind, limit) in [
            (
                "Complete",
                i64_at(&cj, "/spec/successfulJobsHistoryLimit").unwrap_or(3),
            ),
            ("Failed", i64_at(&cj, "/spec/failedJobsHistoryLimit").unwrap_or(1)),
        ] {
            let done: Vec<&Arc<Value>> = jobs
                .iter()
                .filter(|j| job_finished(j) == Some(kind) && !is_deleting(j))
                .collect();
            let extra = done.len().saturating_sub(limit.max(0) as usize);
            for j in done.into_iter().take(extra) {
                self.delete(
                    &Kind::Job.gr(),
                    j,
                    json!({"propagationPolicy": "Background"}),
                    &who,
                )
                .await?;
            }
        }
        let active: Vec<Value> = jobs
            .iter()
            .filter(|j| job_finished(j).is_none() && !is_deleting(j))
            .map(|j| {
                json!({
                    "kind": "Job",
                    "namespace": ns,
                    "name": meta_str(j, "name"),
                    "uid": meta_str(j, "uid"),
                    "apiVersion": "batch/v1",
                    "resourceVersion": meta_str(j, "resourceVersion"),
                })
            })
            .collect();
        let last_success = jobs
            .iter()
            .filter(|j| job_finished(j) == Some("Complete"))
            .filter_map(|j| j.pointer("/status/completionTime").and_then(Value::as_str))
            .max()
            .map(String::from)
            .or_else(|| {
                cj.pointer("/status/lastSuccessfulTime")
                    .and_then(Value::as_str)
                    .map(String::from)
            });
        let mut status = json!({});
        if !active.is_empty() {
            status["active"] = json!(active);
        }
        if !last_schedule.is_empty() {
            status["lastScheduleTime"] = json!(last_schedule);
        }
        if let Some(t) = last_success {
            status["lastSuccessfulTime"] = json!(t);
        }
        self.put_status(Kind::CronJob, &cj, status, &who).await?;
        // Wake for the next schedule time.
        if let Some(next) = schedule.next_after(now)
            && let Ok(wait) = (next - now).to_std()
        {
            self.requeue_after(key, wait + std::time::Duration::from_millis(100));
        }
        Ok(())
    }
}

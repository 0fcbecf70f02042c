//! API errors and the `metav1.Status` objects the real server answers them with.

use serde_json::{Value, json};

/// An error answered to a client as a `Status` object with an HTTP code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code, also `Status.code`.
    pub code: u16,
    /// `Status.reason`, like `NotFound`.
    pub reason: String,
    /// Human-readable message, worded as the real server words it.
    pub message: String,
    /// `Status.details`, if any (boxed: errors travel in `Result`s on every path).
    pub details: Option<Box<Value>>,
    /// Seconds for a `Retry-After` header (429 and some 5xx).
    pub retry_after: Option<u64>,
    /// `Status.metadata.continue`, as a 410 for an expired continue token carries.
    pub continue_token: Option<String>,
    /// `Warning` headers sent with the error (admission webhooks' warnings reach the client even
    /// when a webhook denies the request). A boxed slice: errors travel in `Result`s everywhere.
    pub warnings: Box<[String]>,
}

/// Everything the API can fail with.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error with the given code, reason and message.
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
            retry_after: None,
            continue_token: None,
            warnings: Box::default(),
        }
    }

    /// The same error with `Status.details` set.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 404 for a named object: `configmaps "x" not found`.
    pub fn not_found(group: &str, resource: &str, name: &str) -> Self {
        let gr = qualified(group, resource);
        ApiError::new(404, "NotFound", format!("{gr} \"{name}\" not found"))
            .with_details(details(group, resource, name))
    }

    /// 404 for a path the server does not serve.
    pub fn no_route() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    /// 409 AlreadyExists.
    pub fn already_exists(group: &str, resource: &str, name: &str) -> Self {
        let gr = qualified(group, resource);
        ApiError::new(409, "AlreadyExists", format!("{gr} \"{name}\" already exists"))
            .with_details(details(group, resource, name))
    }

    /// 409 Conflict with the real server's wording: `Operation cannot be fulfilled on ...: why`.
    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Self {
        let gr = qualified(group, resource);
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {gr} \"{name}\": {why}"),
        )
        .with_details(details(group, resource, name))
    }

    /// 409 Conflict for a stale resourceVersion.
    pub fn stale(group: &str, resource: &str, name: &str) -> Self {
        ApiError::conflict(
            group,
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 422 Invalid: `Kind.group "name" is invalid: field: message` with one cause per error.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let gk = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let list: Vec<String> = causes.iter().map(Cause::to_string).collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let causes_json: Vec<Value> = causes
            .iter()
            .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
            .collect();
        // The real server leaves `group` out for the core group (omitempty).
        let mut details = json!({"name": name, "kind": kind, "causes": causes_json});
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        ApiError::new(422, "Invalid", format!("{gk} \"{name}\" is invalid: {joined}")).with_details(details)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// 410 Expired, as for a too old resourceVersion.
    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    /// 415 UnsupportedMediaType.
    /// Worded as `negotiation.NewUnsupportedMediaTypeError` words it for built-in kinds (the
    /// content type sent is not echoed back).
    pub fn unsupported_media_type(_ct: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml",
        )
    }

    /// 413 RequestEntityTooLarge: `Request entity too large: {why}`, as
    /// `NewRequestEntityTooLargeError` words it (no details).
    pub fn request_entity_too_large(why: &str) -> Self {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: {why}"),
        )
    }

    /// An error the real server did not turn into a `Status` itself (like etcd's `etcdserver:
    /// request is too large`): 500 with no reason and the bare message, as `ErrorToAPIStatus`
    /// answers it.
    pub fn unknown(message: impl Into<String>) -> Self {
        ApiError::new(500, "", message)
    }

    /// 500 InternalError.
    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// The `Status` object for this error.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // `StatusReasonUnknown` is the empty string, which the real server omits.
        if self.reason.is_empty()
            && let Some(m) = s.as_object_mut()
        {
            m.remove("reason");
        }
        if let Some(d) = &self.details {
            s["details"] = (**d).clone();
        }
        if let Some(c) = &self.continue_token {
            s["metadata"]["continue"] = json!(c);
        }
        if let Some(r) = self.retry_after {
            let d = s["details"].as_object().cloned().unwrap_or_default();
            let mut d = Value::Object(d);
            d["retryAfterSeconds"] = json!(r);
            s["details"] = d;
        }
        s
    }
}

/// One `StatusCause` of an Invalid error.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// Like `FieldValueRequired`.
    pub reason: String,
    /// The message without the field.
    pub message: String,
    /// The field path, like `spec.engine`.
    pub field: String,
}

impl Cause {
    /// A cause from its parts.
    pub fn new(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason: reason.into(),
            message: message.into(),
            field: field.into(),
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

fn details(group: &str, resource: &str, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": resource});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d
}

/// The `Status` a successful delete of a kind that does not return the object answers with.
pub fn success_status(group: &str, resource: &str, name: &str, uid: &str) -> Value {
    let mut d = details(group, resource, name);
    d["uid"] = json!(uid);
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_causes_like_the_real_server() {
        let one = ApiError::invalid(
            "stable.example.com",
            "Database",
            "x",
            vec![Cause::new("FieldValueRequired", "spec.version", "Required value")],
        );
        assert_eq!(
            one.message,
            "Database.stable.example.com \"x\" is invalid: spec.version: Required value"
        );
        let two = ApiError::invalid(
            "",
            "ConfigMap",
            "x",
            vec![
                Cause::new("FieldValueRequired", "a", "Required value"),
                Cause::new("FieldValueRequired", "b", "Required value"),
            ],
        );
        assert_eq!(
            two.message,
            "ConfigMap \"x\" is invalid: [a: Required value, b: Required value]"
        );
        assert_eq!(two.status()["details"]["causes"][1]["field"], "b");
        // `details.group` is left out for the core group, as the real server's omitempty does.
        assert!(two.status()["details"].get("group").is_none());
        assert_eq!(one.status()["details"]["group"], "stable.example.com");
    }

    #[test]
    fn not_found_names_the_group_resource() {
        let e = ApiError::not_found("stable.example.com", "databases", "x");
        assert_eq!(e.message, "databases.stable.example.com \"x\" not found");
        assert_eq!(e.status()["code"], 404);
    }
}

//! Classifying apiserver errors, as client-go's `k8s.io/apimachinery/pkg/api/errors` does.

fn status(e: &kube::Error) -> Option<&kube::core::Status> {
    match e {
        kube::Error::Api(s) => Some(s),
        _ => None,
    }
}

/// 404: the object (or its namespace) does not exist.
pub fn is_not_found(e: &kube::Error) -> bool {
    status(e).is_some_and(|s| s.code == 404 || s.reason == "NotFound")
}

/// 409 AlreadyExists: a create found the name taken.
pub fn is_already_exists(e: &kube::Error) -> bool {
    status(e).is_some_and(|s| s.reason == "AlreadyExists")
}

/// 409 Conflict: the write was based on a stale resourceVersion.
pub fn is_conflict(e: &kube::Error) -> bool {
    status(e).is_some_and(|s| s.code == 409 && s.reason != "AlreadyExists")
}

/// 422 Invalid: the object failed validation.
pub fn is_invalid(e: &kube::Error) -> bool {
    status(e).is_some_and(|s| s.code == 422 || s.reason == "Invalid")
}

/// 403 Forbidden (RBAC, or admission such as a terminating namespace).
pub fn is_forbidden(e: &kube::Error) -> bool {
    status(e).is_some_and(|s| s.code == 403)
}

/// A create refused because the namespace is being deleted (`NamespaceTerminating` cause).
pub fn is_namespace_terminating(e: &kube::Error) -> bool {
    status(e).is_some_and(|s| {
        s.details
            .as_ref()
            .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
    })
}

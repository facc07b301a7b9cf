//! Matching shared by several plugins: node selectors (upstream
//! `component-helpers/scheduling/corev1/nodeaffinity`) and taints/tolerations
//! (upstream `v1helper`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration,
};

/// Whether one requirement on labels holds. Malformed requirements (bad operator, `Gt`
/// without a single integer) never match, as upstream's lazy-error selector treats them.
pub fn label_requirement_matches(
    req: &NodeSelectorRequirement,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let value = labels.and_then(|l| l.get(&req.key));
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        op @ ("Gt" | "Lt") => {
            let [bound] = values else { return false };
            let (Ok(bound), Some(Ok(v))) = (bound.parse::<i64>(), value.map(|v| v.parse::<i64>()))
            else {
                return false;
            };
            if op == "Gt" { v > bound } else { v < bound }
        }
        _ => false,
    }
}

/// Whether one requirement on fields holds; only `metadata.name` with `In`/`NotIn` exists.
fn field_requirement_matches(req: &NodeSelectorRequirement, node: &Node) -> bool {
    if req.key != "metadata.name" {
        return false;
    }
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => values.len() == 1 && values[0] == name,
        "NotIn" => values.len() == 1 && values[0] != name,
        _ => false,
    }
}

/// Whether a term matches `node`: all of its requirements hold. An empty term matches
/// nothing (upstream).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    exprs.iter().all(|r| label_requirement_matches(r, labels))
        && fields.iter().all(|r| field_requirement_matches(r, node))
}

/// Whether any term of `selector` matches (terms are ORed).
pub fn node_selector_matches(selector: &NodeSelector, node: &Node) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

/// Whether `toleration` tolerates `taint` (upstream `ToleratesTaint`).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let operator = toleration.operator.as_deref().unwrap_or("Equal");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match operator {
        // An empty key with Exists tolerates everything.
        "Exists" => true,
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

/// The first taint passing `filter` that no toleration tolerates
/// (upstream `FindMatchingUntoleratedTaint`).
pub fn find_untolerated_taint<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    filter: impl Fn(&Taint) -> bool,
) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| filter(t))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn requirements() {
        let n = node(&[("zone", "a"), ("cores", "8")]);
        let l = n.metadata.labels.as_ref();
        assert!(label_requirement_matches(
            &req("zone", "In", &["a", "b"]),
            l
        ));
        assert!(!label_requirement_matches(&req("zone", "NotIn", &["a"]), l));
        assert!(label_requirement_matches(&req("gpu", "NotIn", &["x"]), l));
        assert!(label_requirement_matches(&req("zone", "Exists", &[]), l));
        assert!(label_requirement_matches(
            &req("gpu", "DoesNotExist", &[]),
            l
        ));
        assert!(label_requirement_matches(&req("cores", "Gt", &["4"]), l));
        assert!(!label_requirement_matches(&req("cores", "Lt", &["4"]), l));
        assert!(
            !label_requirement_matches(&req("cores", "Gt", &["x"]), l),
            "malformed never matches"
        );
        assert!(!label_requirement_matches(&req("zone", "Bogus", &[]), l));
        let term = NodeSelectorTerm {
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
            ..Default::default()
        };
        assert!(term_matches(&term, &n));
        assert!(
            !term_matches(&NodeSelectorTerm::default(), &n),
            "empty term matches nothing"
        );
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tol =
            |key: Option<&str>, op: Option<&str>, value: Option<&str>, effect: Option<&str>| {
                Toleration {
                    key: key.map(Into::into),
                    operator: op.map(Into::into),
                    value: value.map(Into::into),
                    effect: effect.map(Into::into),
                    ..Default::default()
                }
            };
        assert!(tolerates(
            &tol(Some("dedicated"), None, Some("gpu"), None),
            &taint
        ));
        assert!(!tolerates(
            &tol(Some("dedicated"), None, Some("cpu"), None),
            &taint
        ));
        assert!(tolerates(
            &tol(Some("dedicated"), Some("Exists"), None, Some("NoSchedule")),
            &taint
        ));
        assert!(!tolerates(
            &tol(Some("dedicated"), Some("Exists"), None, Some("NoExecute")),
            &taint
        ));
        assert!(tolerates(&tol(None, Some("Exists"), None, None), &taint));
        let taints = [taint.clone()];
        assert_eq!(find_untolerated_taint(&taints, &[], |_| true), Some(&taint));
        assert_eq!(
            find_untolerated_taint(&taints, &[], |t| t.effect == "NoExecute"),
            None
        );
    }
}

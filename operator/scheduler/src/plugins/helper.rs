//! Matching shared by several plugins: node selectors (upstream
//! `component-helpers/scheduling/corev1/nodeaffinity`), taints/tolerations
//! (upstream `v1helper`) and parsed label selectors (apimachinery's `labels.Selector`),
//! and the per-domain counts the topology plugins keep.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use k8s_openapi::api::core::v1::{NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::transform::CachedNode;

/// The maps the topology plugins count domains in, several per cycle: std's SipHash cost
/// more than the counting for these short keys (node label values), which come from the
/// cluster's own objects.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Adds `delta` to `key`'s count and returns the new count. The topology plugins call this
/// per node or per matching pod in every cycle, and the domain is nearly always counted
/// already: the key is looked up before it is allocated.
pub fn add_count<S: BuildHasher>(
    counts: &mut HashMap<String, i64, S>,
    key: &str,
    delta: i64,
) -> i64 {
    match counts.get_mut(key) {
        Some(n) => {
            *n += delta;
            *n
        }
        None => {
            counts.insert(key.to_string(), delta);
            delta
        }
    }
}

/// A selector operator (apimachinery `selection.Operator`, the ones label selectors use).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `key=value` (matchLabels).
    Equals,
    /// `key in (values)`.
    In,
    /// `key notin (values)`: also true when the key is absent.
    NotIn,
    /// `key` present.
    Exists,
    /// `key` absent.
    DoesNotExist,
}

/// One requirement of a parsed selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: Op,
    /// The values (one for Equals, none for Exists/DoesNotExist).
    pub values: Vec<String>,
}

impl Requirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let v = labels.and_then(|l| l.get(&self.key));
        match self.op {
            Op::Equals | Op::In => v.is_some_and(|v| self.values.contains(v)),
            Op::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }
}

/// A parsed label selector (apimachinery `labels.Selector`). A `nil` selector selects
/// nothing; an empty one (no requirements) selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Selector {
    /// `labels.Nothing()`.
    #[default]
    Nothing,
    /// All requirements must hold; none = `labels.Everything()`.
    Requirements(Vec<Requirement>),
}

impl Selector {
    /// `labels.Everything()`.
    pub fn everything() -> Self {
        Self::Requirements(Vec::new())
    }

    /// A selector equal to `set` (`labels.SelectorFromSet`).
    pub fn from_set(set: &BTreeMap<String, String>) -> Self {
        Self::Requirements(
            set.iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    op: Op::Equals,
                    values: vec![v.clone()],
                })
                .collect(),
        )
    }

    /// Whether `labels` are selected.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        match self {
            Self::Nothing => false,
            Self::Requirements(reqs) => reqs.iter().all(|r| r.matches(labels)),
        }
    }

    /// upstream `Selector.Empty()`: true for Everything only (Nothing is not "empty").
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Requirements(r) if r.is_empty())
    }

    /// Adds requirements (`Selector.Add`); Nothing stays Nothing.
    pub fn add(&mut self, more: impl IntoIterator<Item = Requirement>) {
        if let Self::Requirements(reqs) = self {
            reqs.extend(more);
        }
    }

    /// The requirements (`Selector.Requirements()`); `None` for Nothing.
    pub fn requirements(&self) -> Option<&[Requirement]> {
        match self {
            Self::Nothing => None,
            Self::Requirements(r) => Some(r),
        }
    }
}

/// apimachinery `metav1.LabelSelectorAsSelector`, with its error messages: `nil` selects
/// nothing, `{}` everything; unknown operators and value counts that do not fit the
/// operator are errors.
pub fn label_selector_as_selector(ls: Option<&LabelSelector>) -> Result<Selector, String> {
    let Some(ls) = ls else {
        return Ok(Selector::Nothing);
    };
    let labels = ls.match_labels.as_ref();
    let exprs = ls.match_expressions.as_deref().unwrap_or_default();
    if labels.is_none_or(BTreeMap::is_empty) && exprs.is_empty() {
        return Ok(Selector::everything());
    }
    let mut reqs = Vec::new();
    for (k, v) in labels.into_iter().flatten() {
        reqs.push(new_requirement(k, Op::Equals, vec![v.clone()])?);
    }
    for e in exprs {
        let op = match e.operator.as_str() {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        };
        reqs.push(new_requirement(
            &e.key,
            op,
            e.values.clone().unwrap_or_default(),
        )?);
    }
    Ok(Selector::Requirements(reqs))
}

/// apimachinery `labels.NewRequirement`'s checks on the value count and the values.
fn new_requirement(key: &str, op: Op, values: Vec<String>) -> Result<Requirement, String> {
    if key.is_empty() {
        return Err("key: Invalid value: \"\": name part must be non-empty".into());
    }
    match op {
        Op::In | Op::NotIn if values.is_empty() => {
            return Err(
                "values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty"
                    .into(),
            );
        }
        Op::Equals if values.len() != 1 => {
            return Err(
                "values: Invalid value: exact-match compatibility requires one single value".into(),
            );
        }
        Op::Exists | Op::DoesNotExist if !values.is_empty() => {
            return Err(
                "values: Invalid value: values set must be empty for exists and does not exist"
                    .into(),
            );
        }
        _ => {}
    }
    for v in &values {
        if !valid_label_value(v) {
            return Err(format!(
                "values[0][{key}]: Invalid value: {v:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            ));
        }
    }
    Ok(Requirement {
        key: key.to_string(),
        op,
        values,
    })
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric.
fn valid_label_value(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let b = v.as_bytes();
    v.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

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
fn field_requirement_matches(req: &NodeSelectorRequirement, node: &CachedNode) -> bool {
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
pub fn term_matches(term: &NodeSelectorTerm, node: &CachedNode) -> bool {
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
pub fn node_selector_matches(selector: &NodeSelector, node: &CachedNode) -> bool {
    selector
        .node_selector_terms
        .iter()
        .any(|t| term_matches(t, node))
}

// Shared with the controller-manager's taint eviction.
pub use ferrokube_runtime::taints::{find_untolerated_taint, tolerates};

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Taint, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn add_count_inserts_then_accumulates() {
        let mut counts = HashMap::new();
        assert_eq!(add_count(&mut counts, "zone-a", 2), 2);
        assert_eq!(add_count(&mut counts, "zone-a", 3), 5);
        assert_eq!(add_count(&mut counts, "zone-b", -1), -1);
        assert_eq!(add_count(&mut counts, "zone-a", -5), 0);
        assert_eq!(counts.len(), 2);
        assert_eq!(counts.get("zone-a"), Some(&0));
    }

    fn node(labels: &[(&str, &str)]) -> CachedNode {
        CachedNode {
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
    fn label_selectors_as_upstream() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(
            !label_selector_as_selector(None)
                .expect("nil")
                .matches(Some(&labels))
        );
        let all = label_selector_as_selector(Some(&LabelSelector::default())).expect("empty");
        assert!(all.matches(None) && all.is_empty());
        let sel = |op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: Some(values.iter().map(ToString::to_string).collect()),
            }]),
            ..Default::default()
        };
        let s = label_selector_as_selector(Some(&sel("In", &["web", "db"]))).expect("valid");
        assert!(s.matches(Some(&labels)));
        assert!(!s.matches(None));
        let s = label_selector_as_selector(Some(&sel("NotIn", &["db"]))).expect("valid");
        assert!(s.matches(Some(&labels)) && s.matches(None));
        assert_eq!(
            label_selector_as_selector(Some(&sel("Bogus", &[]))).expect_err("bad op"),
            "\"Bogus\" is not a valid label selector operator"
        );
        assert!(label_selector_as_selector(Some(&sel("In", &[]))).is_err());
        assert!(label_selector_as_selector(Some(&sel("Exists", &["x"]))).is_err());
        assert!(label_selector_as_selector(Some(&sel("In", &["-bad-"]))).is_err());
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

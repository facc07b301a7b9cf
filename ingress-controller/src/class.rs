//! Which Ingresses are ours: `spec.ingressClassName` naming an IngressClass whose
//! `spec.controller` is our controller name, the legacy `kubernetes.io/ingress.class`
//! annotation, or no class at all while one of our IngressClasses is the cluster default.

use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

/// The legacy class annotation (before `spec.ingressClassName`).
pub const LEGACY_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// Marks the cluster's default IngressClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// How this controller identifies its Ingresses.
#[derive(Clone, Debug)]
pub struct Selection {
    /// `spec.controller` of our IngressClasses (`--controller-class`).
    pub controller: String,
    /// The legacy annotation value we answer to besides our IngressClasses' names
    /// (`--ingress-class`).
    pub legacy_class: String,
    /// Serve Ingresses without any class even when no default class is ours
    /// (`--watch-ingress-without-class`).
    pub without_class: bool,
}

impl Selection {
    /// Whether `ingress` is ours, given the cluster's IngressClasses.
    pub fn is_ours<'a>(
        &self,
        ingress: &Ingress,
        classes: impl IntoIterator<Item = &'a IngressClass> + Clone,
    ) -> bool {
        let ours = |c: &IngressClass| {
            c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(&*self.controller)
        };
        let named_ours = |name: &str| {
            classes
                .clone()
                .into_iter()
                .any(|c| c.metadata.name.as_deref() == Some(name) && ours(c))
        };
        if let Some(name) = ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref())
        {
            return named_ours(name);
        }
        if let Some(legacy) = ingress
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEGACY_ANNOTATION))
        {
            return *legacy == self.legacy_class || named_ours(legacy);
        }
        self.without_class
            || classes.into_iter().any(|c| {
                ours(c)
                    && c.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                        .is_some_and(|v| v == "true")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(name: &str, controller: &str, default: bool) -> IngressClass {
        let mut c = json!({"metadata": {"name": name}, "spec": {"controller": controller}});
        if default {
            c["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: "true"});
        }
        serde_json::from_value(c).expect("class")
    }

    fn ingress(class_name: Option<&str>, legacy: Option<&str>) -> Ingress {
        let mut i = json!({"metadata": {"name": "i", "namespace": "ns"}, "spec": {}});
        if let Some(c) = class_name {
            i["spec"]["ingressClassName"] = json!(c);
        }
        if let Some(l) = legacy {
            i["metadata"]["annotations"] = json!({LEGACY_ANNOTATION: l});
        }
        serde_json::from_value(i).expect("ingress")
    }

    #[test]
    fn selection() {
        let sel = Selection {
            controller: "ferrokube.io/ingress".into(),
            legacy_class: "ferrokube".into(),
            without_class: false,
        };
        let mine = class("fk", "ferrokube.io/ingress", false);
        let nginx = class("nginx", "k8s.io/ingress-nginx", true);
        let classes = [mine.clone(), nginx.clone()];
        assert!(sel.is_ours(&ingress(Some("fk"), None), &classes));
        assert!(!sel.is_ours(&ingress(Some("nginx"), None), &classes));
        assert!(!sel.is_ours(&ingress(Some("missing"), None), &classes));
        // The spec field wins over the annotation.
        assert!(!sel.is_ours(&ingress(Some("nginx"), Some("fk")), &classes));
        assert!(sel.is_ours(&ingress(None, Some("ferrokube")), &classes));
        assert!(sel.is_ours(&ingress(None, Some("fk")), &classes));
        assert!(!sel.is_ours(&ingress(None, Some("nginx")), &classes));
        // No class: only when the default class is ours (here it is nginx's).
        assert!(!sel.is_ours(&ingress(None, None), &classes));
        let classes = [class("fk", "ferrokube.io/ingress", true), nginx];
        assert!(sel.is_ours(&ingress(None, None), &classes));
        let all = Selection {
            without_class: true,
            ..sel
        };
        assert!(all.is_ours(&ingress(None, None), &[mine]));
    }
}

//! Slim cached types: a component that reads a few fields of an API type decodes it into a
//! struct of its own (only those fields), which must still be listed and watched at the
//! API type's URLs. [`resource_as!`](crate::resource_as) gives such a struct the API type's
//! identity.

/// Implements [`kube::Resource`] for `$cached`, a slim decoding of the API type `$api`:
/// `$api`'s kind, group, version, plural and scope, so informers list and watch `$api`'s
/// URLs. `$cached` must keep the metadata as `metadata: ObjectMeta`.
#[macro_export]
macro_rules! resource_as {
    ($cached:ty, $api:ty) => {
        impl ::kube::Resource for $cached {
            type DynamicType = ();
            type Scope = <$api as ::kube::Resource>::Scope;

            fn kind(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$api as ::kube::Resource>::kind(dt)
            }
            fn group(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$api as ::kube::Resource>::group(dt)
            }
            fn version(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$api as ::kube::Resource>::version(dt)
            }
            fn api_version(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$api as ::kube::Resource>::api_version(dt)
            }
            fn plural(dt: &()) -> ::std::borrow::Cow<'_, str> {
                <$api as ::kube::Resource>::plural(dt)
            }
            fn meta(&self) -> &::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(
                &mut self,
            ) -> &mut ::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::Resource;

    #[derive(Default)]
    struct SlimNode {
        metadata: ObjectMeta,
    }
    crate::resource_as!(SlimNode, Node);

    #[test]
    fn takes_the_api_types_identity() {
        assert_eq!(SlimNode::kind(&()), "Node");
        assert_eq!(SlimNode::group(&()), "");
        assert_eq!(SlimNode::version(&()), "v1");
        assert_eq!(SlimNode::api_version(&()), "v1");
        assert_eq!(SlimNode::plural(&()), "nodes");
        let mut n = SlimNode::default();
        n.meta_mut().name = Some("n1".into());
        assert_eq!(n.meta().name.as_deref(), Some("n1"));
        assert_eq!(SlimNode::url_path(&(), None), "/api/v1/nodes");
    }
}

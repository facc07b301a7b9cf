//! Binding pods to nodes (the Bind extension point).

pub mod default_binder;

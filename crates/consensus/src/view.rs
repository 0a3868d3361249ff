//! Questions asked of the tailnet view about one node, shared by
//! bootstrap, the command API's guards, leadership transfer and the admin
//! endpoint.

use ts_discovery::ClusterView;

/// Whether `stable_id` is tagged and online in `view` (this node counts as
/// online).
pub(crate) fn tagged_online(view: &ClusterView, stable_id: &str) -> bool {
    (view.self_node.id.0 == stable_id && view.self_tagged())
        || view.members.values().any(|n| n.id.0 == stable_id && n.online)
}

/// Whether `stable_id` is tagged in `view`, online or not (this node
/// included).
pub(crate) fn tagged(view: &ClusterView, stable_id: &str) -> bool {
    (view.self_node.id.0 == stable_id && view.self_tagged())
        || view.members.values().any(|n| n.id.0 == stable_id)
}

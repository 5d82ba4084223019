//! Tables of records ordered by their member's id.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::sync::Arc;

use crate::id::NodeId;
use crate::member::Member;

/// A record that names the member it is about.
pub trait HasId {
    /// The member's id.
    fn id(&self) -> &NodeId;
}

impl HasId for Member {
    fn id(&self) -> &NodeId {
        &self.id
    }
}

impl<T: HasId> HasId for Arc<T> {
    fn id(&self) -> &NodeId {
        (**self).id()
    }
}

/// A record ordered, compared and looked up by its member's id alone, so
/// that a `BTreeSet<ById<T>>` is a table keyed by id that holds each 32-byte
/// id once, not twice as a `BTreeMap<NodeId, T>` does. Every node keeps a
/// record of every member, so in a cluster of thousands this is a third of
/// the table.
///
/// ```
/// use std::collections::BTreeSet;
/// use gossip_core::{ById, Member, MemberMeta, NodeId};
/// let id = NodeId::from_bytes([1; 32]);
/// let mut table = BTreeSet::new();
/// table.insert(ById(Member::new(id, MemberMeta::default())));
/// assert_eq!(table.get(&id).map(|m| m.0.id), Some(id));
/// ```
#[derive(Debug, Clone)]
pub struct ById<T>(pub T);

impl<T: HasId> PartialEq for ById<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.id() == other.0.id()
    }
}

impl<T: HasId> Eq for ById<T> {}

impl<T: HasId> PartialOrd for ById<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: HasId> Ord for ById<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.id().cmp(other.0.id())
    }
}

// Consistent with `Ord` above, as `Borrow` requires: both compare the ids.
impl<T: HasId> Borrow<NodeId> for ById<T> {
    fn borrow(&self) -> &NodeId {
        self.0.id()
    }
}

//! The client's value types: id newtypes and keys as the server stored them.

use std::fmt;

use cairn_proto::mvccpb;

/// A lease's id. The server picks it on grant (etcd never hands out 0, which means "no lease").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    /// Hexadecimal, as etcdctl prints lease ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A revision of the coordinator's key-value store: every write advances it by one, and every
/// key records the revision that created it and the one that last modified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision(pub i64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A key and its value as stored at some revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the put that created this incarnation of the key (a fencing token for lock
    /// keys: it only grows across incarnations).
    pub create_revision: Revision,
    /// Revision of the latest change; for a deleted key (in a delete event), the deletion.
    pub mod_revision: Revision,
    /// Puts since the key was created, counting the creating one; 0 once deleted.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

impl KeyValue {
    pub(crate) fn from_proto(kv: mvccpb::KeyValue) -> Self {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: Revision(kv.create_revision),
            mod_revision: Revision(kv.mod_revision),
            version: kv.version,
            lease: (kv.lease != 0).then_some(LeaseId(kv.lease)),
        }
    }
}

/// The answer to a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The store's revision the read was served at.
    pub revision: Revision,
    /// Matching keys in key order.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys matched than were returned (only when a limit was set).
    pub more: bool,
    /// How many keys matched in total.
    pub count: i64,
}

/// The answer to a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// The store's revision after the delete (unchanged when nothing was deleted).
    pub revision: Revision,
    /// How many keys were deleted.
    pub count: i64,
}

/// The end of the key range that holds exactly the keys starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff incremented and everything
/// after it dropped. A prefix of only 0xff bytes, or the empty prefix, ranges over every key
/// from it on, which etcd spells `"\0"`.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_end_matches_etcd() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn zero_lease_means_none() {
        let kv = KeyValue::from_proto(mvccpb::KeyValue { key: b"k".to_vec(), lease: 0, ..Default::default() });
        assert_eq!(kv.lease, None);
        let kv = KeyValue::from_proto(mvccpb::KeyValue { key: b"k".to_vec(), lease: 7, ..Default::default() });
        assert_eq!(kv.lease, Some(LeaseId(7)));
        assert_eq!(LeaseId(255).to_string(), "ff");
    }
}

//! Byte layouts of the MVCC tables: keys, values, and their decoders.
//!
//! All integers are big-endian so that bytewise key order is numeric order. Revisions are
//! positive, so their two's-complement bytes already sort; lease ids may be negative and get
//! their sign bit flipped.
//!
//! `kv_history` keys must sort by (user key, revision) with every version of one user key
//! contiguous, for arbitrary binary user keys. The user key is escaped (0x00 becomes 0x00 0xFF)
//! and terminated with 0x00 0x01: a terminator sorts below any escaped byte that could follow,
//! so the encoding preserves order and no encoded key is a prefix of another. A scan of user
//! keys `[a, b)` is then the bytewise range `[enc(a), enc(b))` of encoded prefixes.

use cairn_proto::mvccpb::KeyValue;
use prost::Message;

use super::error::KvError;

/// Meta key of the store revision (i64).
pub(crate) const META_REVISION: &[u8] = b"revision";
/// Meta key of the compaction revision (i64); absent until the first compaction.
pub(crate) const META_COMPACTED: &[u8] = b"compacted";

/// Tag of a `kv_history` value that holds a put; followed by the encoded `KeyValue`.
const HISTORY_PUT: u8 = 1;
/// The whole `kv_history` value of a deletion.
const HISTORY_TOMBSTONE: u8 = 0;

/// Tags of `kv_revlog` values, followed by the user key.
pub(crate) const REVLOG_PUT: u8 = 0;
pub(crate) const REVLOG_DELETE: u8 = 1;

/// Length of an encoded revision (main, sub).
const REV_LEN: usize = 16;

pub(crate) fn i64_bytes(v: i64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn decode_i64(bytes: &[u8], what: &str) -> Result<i64, KvError> {
    let arr: [u8; 8] =
        bytes.try_into().map_err(|_| KvError::corrupt(format!("{what}: {} bytes, want 8", bytes.len())))?;
    Ok(i64::from_be_bytes(arr))
}

/// A revision (main, sub) as 16 order-preserving bytes: the `kv_revlog` key.
pub(crate) fn revision_key(main: i64, sub: i64) -> [u8; REV_LEN] {
    let mut out = [0u8; REV_LEN];
    out[..8].copy_from_slice(&main.to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

pub(crate) fn decode_revision(bytes: &[u8]) -> Result<(i64, i64), KvError> {
    if bytes.len() != REV_LEN {
        return Err(KvError::corrupt(format!("revision key of {} bytes", bytes.len())));
    }
    Ok((decode_i64(&bytes[..8], "revision main")?, decode_i64(&bytes[8..], "revision sub")?))
}

/// The escaped, terminated form of a user key: the prefix of all its `kv_history` keys.
pub(crate) fn history_prefix(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 2 + REV_LEN);
    for &b in user_key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
    out
}

/// The `kv_history` key of `user_key` at revision (main, sub).
pub(crate) fn history_key(user_key: &[u8], main: i64, sub: i64) -> Vec<u8> {
    let mut out = history_prefix(user_key);
    out.extend_from_slice(&revision_key(main, sub));
    out
}

/// Splits a `kv_history` key into (user key, main, sub).
pub(crate) fn decode_history_key(key: &[u8]) -> Result<(Vec<u8>, i64, i64), KvError> {
    let mut user = Vec::with_capacity(key.len());
    let mut i = 0;
    loop {
        match (key.get(i), key.get(i + 1)) {
            (Some(0), Some(0xFF)) => {
                user.push(0);
                i += 2;
            }
            (Some(0), Some(0x01)) => {
                i += 2;
                break;
            }
            (Some(0), _) | (None, _) => return Err(KvError::corrupt("history key without terminator")),
            (Some(&b), _) => {
                user.push(b);
                i += 1;
            }
        }
    }
    let (main, sub) = decode_revision(&key[i..])?;
    Ok((user, main, sub))
}

/// A lease id as 8 bytes that sort in numeric order.
pub(crate) fn lease_id_key(id: i64) -> [u8; 8] {
    ((id as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn decode_lease_id(bytes: &[u8]) -> Result<i64, KvError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| KvError::corrupt("lease id key"))?;
    Ok((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
}

/// `lease_keys` key: lease id, then the raw user key.
pub(crate) fn lease_key_entry(id: i64, user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + user_key.len());
    out.extend_from_slice(&lease_id_key(id));
    out.extend_from_slice(user_key);
    out
}

/// The `[start, end)` bounds of every `lease_keys` entry of lease `id` (`end = None`: to the
/// table's end, for the largest id).
pub(crate) fn lease_keys_bounds(id: i64) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = lease_id_key(id).to_vec();
    let end = id.checked_add(1).map(|next| lease_id_key(next).to_vec());
    (start, end)
}

/// A `KeyValue` as stored: without its key, which the table key already holds.
pub(crate) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let stored = KeyValue { key: Vec::new(), ..kv.clone() };
    stored.encode_to_vec()
}

pub(crate) fn decode_kv(user_key: &[u8], bytes: &[u8]) -> Result<KeyValue, KvError> {
    let mut kv = KeyValue::decode(bytes).map_err(|e| KvError::corrupt(format!("key-value: {e}")))?;
    kv.key = user_key.to_vec();
    Ok(kv)
}

pub(crate) fn encode_history_put(kv: &KeyValue) -> Vec<u8> {
    let mut out = vec![HISTORY_PUT];
    out.extend_from_slice(&encode_kv(kv));
    out
}

pub(crate) fn encode_history_tombstone() -> Vec<u8> {
    vec![HISTORY_TOMBSTONE]
}

/// Decodes a `kv_history` value: `Some(kv)` for a put, `None` for a tombstone.
pub(crate) fn decode_history_value(user_key: &[u8], bytes: &[u8]) -> Result<Option<KeyValue>, KvError> {
    match bytes.split_first() {
        Some((&HISTORY_PUT, rest)) => Ok(Some(decode_kv(user_key, rest)?)),
        Some((&HISTORY_TOMBSTONE, [])) => Ok(None),
        _ => Err(KvError::corrupt("history value tag")),
    }
}

/// Whether a `kv_history` value is a put, without decoding it.
pub(crate) fn history_value_is_put(bytes: &[u8]) -> Result<bool, KvError> {
    match bytes.first() {
        Some(&HISTORY_PUT) => Ok(true),
        Some(&HISTORY_TOMBSTONE) if bytes.len() == 1 => Ok(false),
        _ => Err(KvError::corrupt("history value tag")),
    }
}

pub(crate) fn encode_revlog(tag: u8, user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + user_key.len());
    out.push(tag);
    out.extend_from_slice(user_key);
    out
}

/// Decodes a `kv_revlog` value into (tag, user key).
pub(crate) fn decode_revlog(bytes: &[u8]) -> Result<(u8, &[u8]), KvError> {
    match bytes.split_first() {
        Some((&tag, key)) if tag == REVLOG_PUT || tag == REVLOG_DELETE => Ok((tag, key)),
        _ => Err(KvError::corrupt("revlog value tag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_like_user_keys_then_revisions() {
        let keys: &[&[u8]] =
            &[b"", b"\x00", b"\x00\x00", b"\x00\x01", b"\x00\xff", b"a", b"a\x00", b"a\x00b", b"ab", b"b", b"\xff"];
        let mut encoded = Vec::new();
        for k in keys {
            for rev in [1, 2, 300] {
                encoded.push(history_key(k, rev, 0));
                encoded.push(history_key(k, rev, 1));
            }
        }
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        for (i, k) in keys.iter().enumerate() {
            let decoded = decode_history_key(&history_key(k, 7, i as i64)).expect("decode");
            assert_eq!(decoded, (k.to_vec(), 7, i as i64));
            // Every version of a key lies below the prefix of the next key.
            if let Some(next) = keys.get(i + 1) {
                assert!(history_key(k, i64::MAX, i64::MAX) < history_prefix(next));
            }
        }
        assert!(decode_history_key(b"abc").is_err());
    }

    #[test]
    fn lease_ids_sort_numerically() {
        let ids = [i64::MIN, -5, -1, 1, 2, i64::MAX];
        let keys: Vec<_> = ids.iter().map(|id| lease_id_key(*id)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for id in ids {
            assert_eq!(decode_lease_id(&lease_id_key(id)).expect("decode"), id);
        }
    }
}

//! State-machine tests: every command goes through `App::apply` on an in-memory store, exactly
//! as the runtime drives it, and reads go through the public read functions.

use cairn_proto::coordinator::internal_request::Request;
use cairn_proto::coordinator::internal_response::Response;
use cairn_proto::coordinator::LeaseExpire;
use cairn_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cairn_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use cairn_proto::etcdserverpb::request_op;
use cairn_proto::etcdserverpb::response_op;
use cairn_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use cairn_proto::mvccpb::event::EventType;
use cairn_proto::mvccpb::{Event, KeyValue};
use tokio::sync::broadcast::error::TryRecvError;

use super::*;
use crate::rsm::app::App;
use crate::rsm::store::{MemStore, RocksStore, StateStore, WriteSet};

/// Drives a `KvStateMachine` over a store the way the runtime does.
struct Harness {
    store: Box<dyn StateStore>,
    sm: KvStateMachine,
    index: u64,
}

impl Harness {
    fn new() -> Self {
        Self::on(Box::new(MemStore::new(TABLES)))
    }

    fn on(store: Box<dyn StateStore>) -> Self {
        Self { store, sm: KvStateMachine::new(), index: 0 }
    }

    fn apply_bytes(&mut self, command: &[u8]) -> (Vec<u8>, usize) {
        self.index += 1;
        let mut writes = WriteSet::new();
        let out = self.sm.apply(&*self.store, &mut writes, self.index, command).expect("apply");
        let n = writes.len();
        self.store.write(writes).expect("write");
        self.sm.applied();
        (out, n)
    }

    fn apply(&mut self, request: Request) -> Result<Response, KvError> {
        let (out, _) = self.apply_bytes(&encode_command(request));
        decode_response(&out)
    }

    fn put(&mut self, key: &str, value: &str) -> PutResponse {
        self.put_req(PutRequest { key: key.into(), value: value.into(), ..Default::default() }).expect("put")
    }

    fn put_req(&mut self, req: PutRequest) -> Result<PutResponse, KvError> {
        match self.apply(Request::Put(req))? {
            Response::Put(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn delete(&mut self, key: &str, end: &str) -> DeleteRangeResponse {
        let req = DeleteRangeRequest { key: key.into(), range_end: end.into(), prev_kv: true };
        match self.apply(Request::DeleteRange(req)).expect("delete") {
            Response::DeleteRange(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, KvError> {
        match self.apply(Request::Txn(req))? {
            Response::Txn(r) => Ok(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn grant(&mut self, id: i64, ttl: i64) -> Result<Response, KvError> {
        self.apply(Request::LeaseGrant(LeaseGrantRequest { id, ttl }))
    }

    fn compact(&mut self, revision: i64) -> Result<Response, KvError> {
        self.apply(Request::Compaction(CompactionRequest { revision, physical: false }))
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse, KvError> {
        range(&*self.store.read_view(), &req)
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        let resp = self.range(RangeRequest { key: key.into(), ..Default::default() }).expect("range");
        resp.kvs.into_iter().next()
    }

    fn keys(&self, req: RangeRequest) -> Vec<String> {
        let resp = self.range(req).expect("range");
        resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
    }

    fn rev(&self) -> i64 {
        current_revision(&*self.store.read_view()).expect("revision")
    }

    fn table_keys(&self, table: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.store
            .scan(table, &[], None, false, &mut |k, _| {
                out.push(k.to_vec());
                true
            })
            .expect("scan");
        out
    }
}

fn range_req(key: &str, end: &str) -> RangeRequest {
    RangeRequest { key: key.into(), range_end: end.into(), ..Default::default() }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

fn del_op(key: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: false,
        })),
    }
}

fn range_op(req: RangeRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestRange(req)) }
}

fn txn_op(req: TxnRequest) -> RequestOp {
    RequestOp { request: Some(request_op::Request::RequestTxn(req)) }
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, value: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.into(),
        target_union: Some(value),
        range_end: Vec::new(),
    }
}

fn strs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
        .collect()
}

#[test]
fn revisions_and_versions_across_put_delete_recreate() {
    let mut h = Harness::new();
    assert_eq!(h.rev(), 1, "an empty store is at revision 1, like etcd");

    let r = h.put("a", "1");
    assert_eq!(r.header.expect("header").revision, 2);
    let kv = h.get("a").expect("a");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));

    h.put("a", "2");
    let kv = h.get("a").expect("a");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    let d = h.delete("a", "");
    assert_eq!(d.deleted, 1);
    assert_eq!(d.header.expect("header").revision, 4);
    assert_eq!(strs(&d.prev_kvs), vec![("a".into(), "2".into())]);
    assert!(h.get("a").is_none());

    // Deleting nothing changes nothing, not even the revision.
    let d = h.delete("a", "");
    assert_eq!((d.deleted, d.header.expect("header").revision), (0, 4));
    assert_eq!(h.rev(), 4);

    h.put("a", "3");
    let kv = h.get("a").expect("a");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1), "version restarts after a delete");

    // A put that changes nothing still takes a revision.
    h.put("a", "3");
    assert_eq!(h.rev(), 6);
    assert_eq!(h.get("a").expect("a").version, 2);
}

#[test]
fn put_prev_kv_ignore_value_and_ignore_lease() {
    let mut h = Harness::new();
    let r = h
        .put_req(PutRequest { key: "k".into(), value: "v1".into(), prev_kv: true, ..Default::default() })
        .expect("put");
    assert!(r.prev_kv.is_none());
    let r = h
        .put_req(PutRequest { key: "k".into(), value: "v2".into(), prev_kv: true, ..Default::default() })
        .expect("put");
    assert_eq!(r.prev_kv.expect("prev").value, b"v1");

    h.grant(5, 60).expect("grant");
    h.put_req(PutRequest { key: "k".into(), value: "v3".into(), lease: 5, ..Default::default() }).expect("put");
    h.put_req(PutRequest { key: "k".into(), ignore_value: true, ..Default::default() }).expect("put");
    let kv = h.get("k").expect("k");
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v3"[..], 0), "ignore_value keeps the value, not the lease");
    h.put_req(PutRequest { key: "k".into(), value: "v4".into(), lease: 5, ..Default::default() }).expect("put");
    h.put_req(PutRequest { key: "k".into(), value: "v5".into(), ignore_lease: true, ..Default::default() })
        .expect("put");
    let kv = h.get("k").expect("k");
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"v5"[..], 5));

    let rev = h.rev();
    let missing = PutRequest { key: "nope".into(), ignore_value: true, ..Default::default() };
    assert!(matches!(h.put_req(missing), Err(KvError::KeyNotFound)));
    let bad = PutRequest { key: "k".into(), value: "x".into(), ignore_value: true, ..Default::default() };
    assert!(matches!(h.put_req(bad), Err(KvError::ValueProvided)));
    let bad = PutRequest { key: "k".into(), lease: 5, ignore_lease: true, ..Default::default() };
    assert!(matches!(h.put_req(bad), Err(KvError::LeaseProvided)));
    assert!(matches!(h.put_req(PutRequest::default()), Err(KvError::EmptyKey)));
    let no_lease = PutRequest { key: "k".into(), lease: 99, ..Default::default() };
    assert!(matches!(h.put_req(no_lease), Err(KvError::LeaseNotFound)));
    assert_eq!(h.rev(), rev, "failed puts change nothing");
}

fn fill_range_fixture(h: &mut Harness) {
    // Revisions: a=2, b=3, c=4, d=5, e=6, then b again at 7 (version 2).
    for (k, v) in [("a", "5"), ("b", "4"), ("c", "3"), ("d", "2"), ("e", "1")] {
        h.put(k, v);
    }
    h.put("b", "9");
}

#[test]
fn range_key_spans() {
    let mut h = Harness::new();
    fill_range_fixture(&mut h);
    h.put("\u{0}x", "zero");
    assert_eq!(h.keys(range_req("b", "")), ["b"]);
    assert_eq!(h.keys(range_req("b", "d")), ["b", "c"]);
    assert_eq!(h.keys(range_req("c", "\0")), ["c", "d", "e"]);
    assert_eq!(h.keys(range_req("\0", "\0")), ["\u{0}x", "a", "b", "c", "d", "e"]);
    assert!(h.keys(range_req("d", "b")).is_empty());
    assert!(matches!(h.range(range_req("", "")), Err(KvError::EmptyKey)));
    let resp = h.range(range_req("a", "z")).expect("range");
    assert_eq!(resp.header.expect("header").revision, 8);
}

#[test]
fn range_limit_sort_count_and_flags() {
    let mut h = Harness::new();
    fill_range_fixture(&mut h);

    let resp = h.range(RangeRequest { limit: 2, ..range_req("a", "z") }).expect("range");
    assert_eq!(strs(&resp.kvs), [("a".into(), "5".into()), ("b".into(), "9".into())]);
    assert!(resp.more);
    assert_eq!(resp.count, 5);
    let resp = h.range(RangeRequest { limit: 5, ..range_req("a", "z") }).expect("range");
    assert!(!resp.more);

    // Sorting looks at every key before truncating.
    let by_value = RangeRequest {
        limit: 2,
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Value as i32,
        ..range_req("a", "z")
    };
    let resp = h.range(by_value).expect("range");
    assert_eq!(strs(&resp.kvs), [("b".into(), "9".into()), ("a".into(), "5".into())]);
    assert!(resp.more);
    assert_eq!(resp.count, 5);

    let by_mod = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Mod as i32,
        ..range_req("a", "z")
    };
    assert_eq!(h.keys(by_mod), ["b", "e", "d", "c", "a"]);
    let by_create = RangeRequest {
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Create as i32,
        ..range_req("a", "z")
    };
    assert_eq!(h.keys(by_create), ["a", "b", "c", "d", "e"]);
    // A target other than KEY with no order sorts ascending; ties stay in key order.
    let by_version = RangeRequest { sort_target: SortTarget::Version as i32, ..range_req("a", "z") };
    assert_eq!(h.keys(by_version), ["a", "c", "d", "e", "b"]);
    let by_key_desc = RangeRequest { sort_order: SortOrder::Descend as i32, ..range_req("a", "z") };
    assert_eq!(h.keys(by_key_desc), ["e", "d", "c", "b", "a"]);

    let resp = h.range(RangeRequest { keys_only: true, ..range_req("a", "c") }).expect("range");
    assert_eq!(strs(&resp.kvs), [("a".into(), "".into()), ("b".into(), "".into())]);
    assert_eq!(resp.kvs[1].version, 2);

    let resp = h.range(RangeRequest { count_only: true, ..range_req("a", "z") }).expect("range");
    assert!(resp.kvs.is_empty());
    assert_eq!((resp.count, resp.more), (5, false));
}

#[test]
fn range_revision_filters() {
    let mut h = Harness::new();
    fill_range_fixture(&mut h);
    let keys = |h: &Harness, f: fn(&mut RangeRequest)| {
        let mut req = range_req("a", "z");
        f(&mut req);
        let resp = h.range(req).expect("range");
        assert_eq!(resp.count, 5, "count ignores the filters, as in etcd");
        resp.kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect::<Vec<_>>()
    };
    assert_eq!(keys(&h, |r| r.min_mod_revision = 5), ["b", "d", "e"]);
    assert_eq!(keys(&h, |r| r.max_mod_revision = 4), ["a", "c"]);
    assert_eq!(keys(&h, |r| r.min_create_revision = 4), ["c", "d", "e"]);
    assert_eq!(keys(&h, |r| r.max_create_revision = 3), ["a", "b"]);
    assert_eq!(
        keys(&h, |r| {
            r.min_create_revision = 3;
            r.max_mod_revision = 5;
        }),
        ["c", "d"]
    );
    // Filters apply before the limit.
    let resp = h.range(RangeRequest { min_mod_revision: 5, limit: 1, ..range_req("a", "z") });
    let resp = resp.expect("range");
    assert_eq!(strs(&resp.kvs), [("b".into(), "9".into())]);
    assert!(resp.more);
}

#[test]
fn range_at_old_revisions() {
    let mut h = Harness::new();
    fill_range_fixture(&mut h); // through revision 7
    h.delete("c", ""); // 8
    h.put("c", "new"); // 9

    let at = |h: &Harness, rev: i64, key: &str, end: &str| {
        let resp = h.range(RangeRequest { revision: rev, ..range_req(key, end) }).expect("range");
        assert_eq!(resp.header.expect("header").revision, 9, "the header shows the current revision");
        strs(&resp.kvs)
    };
    assert_eq!(at(&h, 1, "a", "z"), Vec::<(String, String)>::new());
    assert_eq!(at(&h, 3, "a", "z"), [("a".into(), "5".into()), ("b".into(), "4".into())]);
    assert_eq!(at(&h, 6, "b", ""), [("b".into(), "4".into())]);
    assert_eq!(at(&h, 7, "b", ""), [("b".into(), "9".into())]);
    assert_eq!(at(&h, 8, "b", "d"), [("b".into(), "9".into())]);
    assert_eq!(at(&h, 8, "c", ""), Vec::<(String, String)>::new());
    assert_eq!(at(&h, 9, "c", ""), [("c".into(), "new".into())]);
    let old_c = h.range(RangeRequest { revision: 7, ..range_req("c", "") }).expect("range").kvs;
    assert_eq!((old_c[0].create_revision, old_c[0].version), (4, 1));
    let resp = h.range(RangeRequest { revision: 6, limit: 2, ..range_req("a", "\0") }).expect("range");
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (2, 5, true));
    assert!(matches!(h.range(RangeRequest { revision: 10, ..range_req("a", "") }), Err(KvError::FutureRev)));
}

#[test]
fn txn_compares_every_target_and_result() {
    let mut h = Harness::new();
    h.grant(7, 60).expect("grant");
    h.put_req(PutRequest { key: "k".into(), value: "m".into(), lease: 7, ..Default::default() }).expect("put"); // rev 2
    h.put("k", "m"); // rev 3: version 2, no lease
    h.put_req(PutRequest { key: "l".into(), value: "x".into(), lease: 7, ..Default::default() }).expect("put"); // rev 4

    use CompareResult::{Equal, Greater, Less, NotEqual};
    use CompareTarget as T;
    let cases: Vec<(Compare, bool)> = vec![
        (cmp("k", T::Version, Equal, TargetUnion::Version(2)), true),
        (cmp("k", T::Version, Greater, TargetUnion::Version(1)), true),
        (cmp("k", T::Version, Less, TargetUnion::Version(2)), false),
        (cmp("k", T::Version, NotEqual, TargetUnion::Version(2)), false),
        (cmp("k", T::Create, Equal, TargetUnion::CreateRevision(2)), true),
        (cmp("k", T::Create, Less, TargetUnion::CreateRevision(3)), true),
        (cmp("k", T::Mod, Equal, TargetUnion::ModRevision(3)), true),
        (cmp("k", T::Mod, Greater, TargetUnion::ModRevision(3)), false),
        (cmp("k", T::Value, Equal, TargetUnion::Value(b"m".to_vec())), true),
        (cmp("k", T::Value, Greater, TargetUnion::Value(b"a".to_vec())), true),
        (cmp("k", T::Value, Less, TargetUnion::Value(b"a".to_vec())), false),
        (cmp("k", T::Value, NotEqual, TargetUnion::Value(b"m".to_vec())), false),
        (cmp("k", T::Lease, Equal, TargetUnion::Lease(0)), true),
        (cmp("l", T::Lease, Equal, TargetUnion::Lease(7)), true),
        (cmp("l", T::Lease, Greater, TargetUnion::Lease(7)), false),
        // A missing key compares as all zeros, except that a value compare always fails.
        (cmp("missing", T::Version, Equal, TargetUnion::Version(0)), true),
        (cmp("missing", T::Create, Equal, TargetUnion::CreateRevision(0)), true),
        (cmp("missing", T::Value, Equal, TargetUnion::Value(Vec::new())), false),
        (cmp("missing", T::Value, NotEqual, TargetUnion::Value(b"x".to_vec())), false),
        // With a range, every key must satisfy the compare.
        (Compare { range_end: b"m".to_vec(), ..cmp("k", T::Create, Greater, TargetUnion::CreateRevision(1)) }, true),
        (Compare { range_end: b"m".to_vec(), ..cmp("k", T::Mod, Greater, TargetUnion::ModRevision(3)) }, false),
        (Compare { range_end: b"\0".to_vec(), ..cmp("a", T::Version, Greater, TargetUnion::Version(0)) }, true),
        (Compare { range_end: b"zz".to_vec(), ..cmp("x", T::Version, Equal, TargetUnion::Version(0)) }, true),
    ];
    for (i, (compare, want)) in cases.into_iter().enumerate() {
        let req =
            TxnRequest { compare: vec![compare.clone()], success: vec![range_op(range_req("k", ""))], failure: vec![] };
        let resp = h.txn(req).expect("txn");
        assert_eq!(resp.succeeded, want, "case {i}: {compare:?}");
        assert_eq!(resp.responses.len(), usize::from(want));
    }
    assert_eq!(h.rev(), 4, "read-only txns change nothing");
    // All compares must hold.
    let req = TxnRequest {
        compare: vec![
            cmp("k", T::Version, Equal, TargetUnion::Version(2)),
            cmp("k", T::Value, Equal, TargetUnion::Value(b"z".to_vec())),
        ],
        success: vec![],
        failure: vec![put_op("f", "1")],
    };
    let resp = h.txn(req).expect("txn");
    assert!(!resp.succeeded);
    assert_eq!(resp.header.expect("header").revision, 5);
}

#[test]
fn txn_is_one_revision_and_reads_its_own_writes() {
    let mut h = Harness::new();
    h.put("a", "old"); // 2
    h.put("z", "z"); // 3
    let req = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("a", "new"),
            range_op(range_req("a", "")),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "b".into(),
                    value: "b".into(),
                    prev_kv: true,
                    ..Default::default()
                })),
            },
            del_op("z", ""),
            range_op(RangeRequest { revision: 3, ..range_req("a", "\0") }),
            range_op(range_req("a", "\0")),
        ],
        failure: vec![],
    };
    let resp = h.txn(req).expect("txn");
    assert_eq!(resp.header.expect("header").revision, 4);
    assert_eq!(h.rev(), 4);
    let r = |i: usize| match &resp.responses[i].response {
        Some(response_op::Response::ResponseRange(r)) => r.clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(strs(&r(1).kvs), [("a".into(), "new".into())]);
    assert_eq!(r(1).header.expect("header").revision, 4);
    assert_eq!(r(1).kvs[0].mod_revision, 4);
    match &resp.responses[2].response {
        Some(response_op::Response::ResponsePut(p)) => {
            assert!(p.prev_kv.is_none());
            assert_eq!(p.header.as_ref().expect("header").revision, 4);
        }
        other => panic!("unexpected {other:?}"),
    }
    // A read at the revision before the txn does not see it.
    assert_eq!(strs(&r(4).kvs), [("a".into(), "old".into()), ("z".into(), "z".into())]);
    assert_eq!(strs(&r(5).kvs), [("a".into(), "new".into()), ("b".into(), "b".into())]);

    // Sub-revisions order the txn's changes in the log.
    let events = history(&*h.store.read_view(), 4, b"\0", b"\0", 100).expect("history");
    let summary: Vec<(i32, String, i64)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("kv");
            (e.r#type, String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision)
        })
        .collect();
    let put = EventType::Put as i32;
    let del = EventType::Delete as i32;
    assert_eq!(summary, [(put, "a".into(), 4), (put, "b".into(), 4), (del, "z".into(), 4)]);

    // A txn whose deletes find nothing keeps the revision.
    let resp =
        h.txn(TxnRequest { compare: vec![], success: vec![del_op("nothing", "")], failure: vec![] }).expect("txn");
    assert_eq!(resp.header.expect("header").revision, 4);
    assert_eq!(h.rev(), 4);
}

#[test]
fn nested_txns_decide_on_the_state_before_the_txn() {
    let mut h = Harness::new();
    h.put("flag", "on"); // 2
    let inner = TxnRequest {
        // Evaluated before the outer put of "flag" runs.
        compare: vec![cmp("flag", CompareTarget::Value, CompareResult::Equal, TargetUnion::Value(b"on".to_vec()))],
        success: vec![put_op("inner", "then"), range_op(range_req("flag", ""))],
        failure: vec![put_op("inner", "else")],
    };
    let outer = TxnRequest {
        compare: vec![cmp("flag", CompareTarget::Version, CompareResult::Greater, TargetUnion::Version(0))],
        success: vec![put_op("flag", "off"), txn_op(inner)],
        failure: vec![],
    };
    let resp = h.txn(outer).expect("txn");
    assert!(resp.succeeded);
    assert_eq!(resp.header.expect("header").revision, 3);
    let Some(response_op::Response::ResponseTxn(nested)) = &resp.responses[1].response else { panic!("nested") };
    assert!(nested.succeeded);
    assert_eq!(nested.header.as_ref().map(|hd| hd.revision), Some(0), "etcd leaves nested headers empty");
    let Some(response_op::Response::ResponseRange(r)) = &nested.responses[1].response else { panic!("range") };
    assert_eq!(r.kvs[0].value, b"off", "but operations see earlier writes");
    assert_eq!(h.get("inner").expect("inner").value, b"then");
    assert_eq!(h.get("inner").expect("inner").mod_revision, 3);
}

#[test]
fn txn_checks_fail_the_whole_txn() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    let with_missing_lease = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("b", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "c".into(),
                    lease: 42,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert!(matches!(h.txn(with_missing_lease), Err(KvError::LeaseNotFound)));
    let ignore_missing = TxnRequest {
        compare: vec![],
        success: vec![
            put_op("b", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "c".into(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert!(matches!(h.txn(ignore_missing), Err(KvError::KeyNotFound)));
    let future = TxnRequest {
        compare: vec![],
        success: vec![put_op("b", "1"), range_op(RangeRequest { revision: 3, ..range_req("a", "") })],
        failure: vec![],
    };
    assert!(matches!(h.txn(future), Err(KvError::FutureRev)));
    // Only the chosen branch is checked.
    let other_branch = TxnRequest {
        compare: vec![],
        success: vec![put_op("b", "1")],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: "c".into(),
                lease: 42,
                ..Default::default()
            })),
        }],
    };
    h.txn(other_branch).expect("txn");
    assert_eq!(h.rev(), 3);
    assert!(h.get("c").is_none());
}

#[test]
fn txn_validation_duplicates_and_too_many_ops() {
    let dup = |success: Vec<RequestOp>| validate_txn(&TxnRequest { compare: vec![], success, failure: vec![] });
    assert!(matches!(dup(vec![put_op("a", "1"), put_op("a", "2")]), Err(KvError::DuplicateKey)));
    assert!(matches!(dup(vec![put_op("b", "1"), del_op("a", "c")]), Err(KvError::DuplicateKey)));
    assert!(matches!(dup(vec![del_op("b", ""), put_op("b", "1")]), Err(KvError::DuplicateKey)));
    assert!(dup(vec![put_op("c", "1"), del_op("a", "c")]).is_ok(), "range ends are exclusive");
    assert!(dup(vec![del_op("a", "c"), del_op("b", "d")]).is_ok(), "deletes may overlap");
    assert!(dup(vec![put_op("b", "1"), del_op("a", "\0")]).is_ok(), "etcd ignores \\0-ended deletes here");
    let then_else = TxnRequest { compare: vec![], success: vec![put_op("k", "1")], failure: vec![put_op("k", "2")] };
    assert!(dup(vec![txn_op(then_else.clone())]).is_ok(), "branches exclude each other");
    assert!(matches!(dup(vec![txn_op(then_else.clone()), put_op("k", "3")]), Err(KvError::DuplicateKey)));
    assert!(matches!(dup(vec![txn_op(then_else), del_op("k", "")]), Err(KvError::DuplicateKey)));
    let nested_del = TxnRequest { compare: vec![], success: vec![del_op("j", "l")], failure: vec![] };
    assert!(matches!(dup(vec![txn_op(nested_del), put_op("k", "1")]), Err(KvError::DuplicateKey)));

    let many: Vec<RequestOp> = (0..crate::limits::KV_TXN_OPS_MAX + 1).map(|i| put_op(&format!("k{i}"), "v")).collect();
    assert!(matches!(dup(many.clone()), Err(KvError::TooManyOps)));
    assert!(dup(many[1..].to_vec()).is_ok());
    let compare_empty_key = TxnRequest { compare: vec![Compare::default()], success: vec![], failure: vec![] };
    assert!(matches!(validate_txn(&compare_empty_key), Err(KvError::EmptyKey)));
    assert!(matches!(dup(vec![RequestOp { request: None }]), Err(KvError::KeyNotFound)));
    assert!(matches!(dup(vec![put_op("", "1")]), Err(KvError::EmptyKey)));

    // apply checks too, and a rejected txn changes nothing.
    let mut h = Harness::new();
    let r = h.txn(TxnRequest { compare: vec![], success: vec![put_op("a", "1"), put_op("a", "2")], failure: vec![] });
    assert!(matches!(r, Err(KvError::DuplicateKey)));
    assert_eq!(h.rev(), 1);
}

#[test]
fn delete_all_then_put_in_one_txn() {
    // Accepted by etcd (see check_intervals); operations run in order.
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    let resp = h
        .txn(TxnRequest { compare: vec![], success: vec![del_op("a", "\0"), put_op("b", "2")], failure: vec![] })
        .expect("txn");
    assert_eq!(resp.header.expect("header").revision, 4);
    assert!(h.get("a").is_none());
    let b = h.get("b").expect("b");
    assert_eq!((b.value.as_slice(), b.create_revision, b.version), (&b"2"[..], 4, 1));
    let at4 = h.range(RangeRequest { revision: 4, ..range_req("a", "\0") }).expect("range");
    assert_eq!(strs(&at4.kvs), [("b".into(), "2".into())]);
}

#[test]
fn compaction() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.put("b", "1"); // 4
    h.delete("b", ""); // 5
    h.put("c", "1"); // 6
    h.put("a", "3"); // 7

    assert!(matches!(h.compact(8), Err(KvError::FutureRev)));
    h.compact(4).expect("compact");
    assert_eq!(compact_revision(&*h.store.read_view()).expect("compacted"), 4);
    assert_eq!(h.rev(), 7, "compaction takes no revision");
    assert!(matches!(h.compact(4), Err(KvError::Compacted { .. })));
    assert!(matches!(h.compact(3), Err(KvError::Compacted { .. })));

    let at =
        |h: &Harness, rev: i64| h.range(RangeRequest { revision: rev, ..range_req("a", "\0") }).map(|r| strs(&r.kvs));
    assert!(matches!(at(&h, 3), Err(KvError::Compacted { compact_revision: 4 })));
    assert_eq!(at(&h, 4).expect("at 4"), [("a".into(), "2".into()), ("b".into(), "1".into())]);
    assert_eq!(at(&h, 5).expect("at 5"), [("a".into(), "2".into())]);
    assert_eq!(at(&h, 0).expect("now"), [("a".into(), "3".into()), ("c".into(), "1".into())]);

    let view = h.store.read_view();
    assert!(matches!(history(&*view, 3, b"a", b"\0", 100), Err(KvError::Compacted { compact_revision: 4 })));
    let events = history(&*view, 4, b"a", b"\0", 100).expect("history");
    let revs: Vec<i64> = events.iter().map(|e| e.kv.as_ref().expect("kv").mod_revision).collect();
    assert_eq!(revs, [4, 5, 6, 7]);
    drop(view);
    // History below the compaction point is gone: a keeps revision 3, b its put at 4 and its
    // tombstone at 5.
    let history_revs: Vec<(Vec<u8>, i64)> = h
        .table_keys(KV_HISTORY)
        .iter()
        .map(|k| {
            let (user, main, _) = keys::decode_history_key(k).expect("key");
            (user, main)
        })
        .collect();
    assert_eq!(
        history_revs,
        [(b"a".to_vec(), 3), (b"a".to_vec(), 7), (b"b".to_vec(), 4), (b"b".to_vec(), 5), (b"c".to_vec(), 6)]
    );
    assert_eq!(h.table_keys(KV_REVLOG).len(), 4);

    // Compacting past b's deletion removes b entirely.
    h.compact(6).expect("compact");
    let users: Vec<Vec<u8>> =
        h.table_keys(KV_HISTORY).iter().map(|k| keys::decode_history_key(k).expect("key").0).collect();
    assert_eq!(users, [b"a".to_vec(), b"a".to_vec(), b"c".to_vec()]);
    assert_eq!(at(&h, 6).expect("at 6"), [("a".into(), "2".into()), ("c".into(), "1".into())]);
    // A txn range below the compaction point fails the txn.
    let req = TxnRequest {
        compare: vec![],
        success: vec![range_op(RangeRequest { revision: 5, ..range_req("a", "") })],
        failure: vec![],
    };
    assert!(matches!(h.txn(req), Err(KvError::Compacted { .. })));
}

#[test]
fn leases_attach_detach_and_revoke_in_one_revision() {
    let mut h = Harness::new();
    match h.grant(7, 30).expect("grant") {
        Response::LeaseGrant(r) => assert_eq!((r.id, r.ttl, r.header.expect("header").revision), (7, 30, 1)),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(h.grant(7, 30), Err(KvError::LeaseExist)));
    assert!(matches!(h.grant(0, 30), Err(KvError::LeaseNotFound)));
    assert!(matches!(h.grant(8, crate::limits::LEASE_TTL_SECS_MAX + 1), Err(KvError::LeaseTtlTooLarge)));
    h.grant(-3, 5).expect("negative ids are ids too");
    let view = h.store.read_view();
    assert_eq!(lease_ids(&*view).expect("ids"), [-3, 7]);
    assert_eq!(lease_get(&*view, 7).expect("get"), Some(LeaseInfo { id: 7, ttl_secs: 30 }));
    assert_eq!(lease_get(&*view, 8).expect("get"), None);
    drop(view);

    for k in ["a", "b", "c"] {
        h.put_req(PutRequest { key: k.into(), value: "v".into(), lease: 7, ..Default::default() }).expect("put");
        // 2, 3, 4
    }
    h.put("c", "no lease"); // 5: detaches c
    h.put_req(PutRequest { key: "d".into(), value: "v".into(), lease: -3, ..Default::default() }).expect("put"); // 6
    h.put_req(PutRequest { key: "d".into(), value: "v".into(), lease: 7, ..Default::default() }).expect("put"); // 7: moves d
    assert_eq!(lease_keys(&*h.store.read_view(), 7).expect("keys"), [b"a".to_vec(), b"b".to_vec(), b"d".to_vec()]);
    assert!(lease_keys(&*h.store.read_view(), -3).expect("keys").is_empty());
    h.delete("b", ""); // 8: detaches b

    let mut live = h.sm.subscribe();
    match h.apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 7 })).expect("revoke") {
        Response::LeaseRevoke(r) => assert_eq!(r.header.expect("header").revision, 9),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.rev(), 9, "one revision for every deletion");
    let batch = live.try_recv().expect("batch");
    assert_eq!(batch.revision, 9);
    let deleted: Vec<(i32, Vec<u8>, Vec<u8>)> = batch
        .events
        .iter()
        .map(|e| (e.r#type, e.kv.as_ref().expect("kv").key.clone(), e.prev_kv.as_ref().expect("prev").key.clone()))
        .collect();
    let del = EventType::Delete as i32;
    assert_eq!(deleted, [(del, b"a".to_vec(), b"a".to_vec()), (del, b"d".to_vec(), b"d".to_vec())]);
    assert_eq!(h.keys(range_req("a", "\0")), ["c"]);
    let view = h.store.read_view();
    assert_eq!(lease_get(&*view, 7).expect("get"), None);
    assert!(lease_keys(&*view, 7).expect("keys").is_empty());
    drop(view);
    assert!(matches!(h.apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 7 })), Err(KvError::LeaseNotFound)));

    // A lease without keys revokes without a revision.
    h.grant(10, 5).expect("grant");
    h.put_req(PutRequest { key: "e".into(), value: "v".into(), lease: 10, ..Default::default() }).expect("put"); // 10
    match h.apply(Request::LeaseExpire(LeaseExpire { ids: vec![7, -3, 10, 10] })).expect("expire") {
        Response::LeaseExpire(r) => assert_eq!(r.revoked, [-3, 10]),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.rev(), 11);
    assert!(h.get("e").is_none());
    assert!(lease_ids(&*h.store.read_view()).expect("ids").is_empty());
}

#[test]
fn history_is_ordered_with_prev_kv() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("a", "2"); // 4
    h.delete("a", ""); // 5
    h.txn(TxnRequest {
        compare: vec![],
        success: vec![put_op("x", "1"), put_op("y", "1"), put_op("b", "2")],
        failure: vec![],
    })
    .expect("txn"); // 6
    h.put("a", "3"); // 7

    let view = h.store.read_view();
    let events = history(&*view, 1, b"a", b"", 100).expect("history");
    type Summary = (i32, i64, Vec<u8>, Option<Vec<u8>>);
    let got: Vec<Summary> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("kv");
            (e.r#type, kv.mod_revision, kv.value.clone(), e.prev_kv.as_ref().map(|p| p.value.clone()))
        })
        .collect();
    let put = EventType::Put as i32;
    let del = EventType::Delete as i32;
    assert_eq!(
        got,
        [
            (put, 2, b"1".to_vec(), None),
            (put, 4, b"2".to_vec(), Some(b"1".to_vec())),
            (del, 5, Vec::new(), Some(b"2".to_vec())),
            (put, 7, b"3".to_vec(), None),
        ]
    );
    let all = history(&*view, 3, b"\0", b"\0", 100).expect("history");
    let revs: Vec<i64> = all.iter().map(|e| e.kv.as_ref().expect("kv").mod_revision).collect();
    assert_eq!(revs, [3, 4, 5, 6, 6, 6, 7]);
    let b2 = &all[5];
    assert_eq!(b2.prev_kv.as_ref().expect("prev").mod_revision, 3);
    // Pages end on revision boundaries.
    let page = history(&*view, 5, b"\0", b"\0", 2).expect("history");
    let revs: Vec<i64> = page.iter().map(|e| e.kv.as_ref().expect("kv").mod_revision).collect();
    assert_eq!(revs, [5, 6, 6, 6]);
    let page = history(&*view, 6, b"x", b"z", 1).expect("history");
    assert_eq!(page.len(), 2);
    assert!(history(&*view, 8, b"\0", b"\0", 10).expect("history").is_empty());
}

#[test]
fn applied_publishes_after_apply() {
    let mut h = Harness::new();
    h.put("k", "1");
    let mut live = h.sm.subscribe();
    let mut writes = WriteSet::new();
    let command = encode_command(Request::Put(PutRequest { key: "k".into(), value: "2".into(), ..Default::default() }));
    h.sm.apply(&*h.store, &mut writes, 99, &command).expect("apply");
    assert!(matches!(live.try_recv(), Err(TryRecvError::Empty)), "nothing before the writes are visible");
    h.store.write(writes).expect("write");
    h.sm.applied();
    let batch = live.try_recv().expect("batch");
    assert_eq!(batch.revision, 3);
    let want = Event {
        r#type: EventType::Put as i32,
        kv: Some(KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            value: b"2".to_vec(),
            lease: 0,
        }),
        prev_kv: Some(KeyValue {
            key: b"k".to_vec(),
            create_revision: 2,
            mod_revision: 2,
            version: 1,
            value: b"1".to_vec(),
            lease: 0,
        }),
    };
    assert_eq!(batch.events, std::slice::from_ref(&want));
    // The stored history tells the same story.
    assert_eq!(history(&*h.store.read_view(), 3, b"k", b"", 10).expect("history"), [want]);
    // Requests that change nothing publish nothing.
    h.delete("nothing", "");
    h.grant(1, 10).expect("grant");
    assert!(matches!(live.try_recv(), Err(TryRecvError::Empty)));
    // A snapshot install tells subscribers to catch up.
    h.sm.snapshot_installed(&*h.store);
    let marker = live.try_recv().expect("marker");
    assert_eq!((marker.revision, marker.events.len()), (3, 0));
}

#[test]
fn malformed_commands_get_an_error_response() {
    let mut h = Harness::new();
    for command in [&b"\xff\xff\xff"[..], &[]] {
        let (out, writes) = h.apply_bytes(command);
        assert_eq!(writes, 0);
        assert!(matches!(decode_response(&out), Err(KvError::Malformed(_))), "{command:?}");
    }
    assert_eq!(h.rev(), 1);
}

#[test]
fn error_codes_round_trip() {
    let errors = [
        KvError::Compacted { compact_revision: 0 },
        KvError::FutureRev,
        KvError::LeaseNotFound,
        KvError::LeaseExist,
        KvError::LeaseTtlTooLarge,
        KvError::TooManyOps,
        KvError::DuplicateKey,
        KvError::KeyNotFound,
        KvError::ValueProvided,
        KvError::LeaseProvided,
        KvError::EmptyKey,
        KvError::RequestTooLarge,
        KvError::Malformed("bad".into()),
        KvError::Other { code: 1000, message: "from the future".into() },
    ];
    for e in errors {
        let back = KvError::from_code(e.code(), e.to_string());
        assert_eq!((back.code(), back.to_string()), (e.code(), e.to_string()));
    }
    assert_eq!(
        KvError::Compacted { compact_revision: 9 }.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(KvError::FutureRev.to_string(), "etcdserver: mvcc: required revision is a future revision");
    assert_eq!(KvError::EmptyKey.to_string(), "etcdserver: key is not provided");
}

#[test]
fn read_txn_serves_read_only_txns() {
    let mut h = Harness::new();
    h.put("a", "1");
    let req = TxnRequest {
        compare: vec![cmp("a", CompareTarget::Value, CompareResult::Equal, TargetUnion::Value(b"1".to_vec()))],
        success: vec![range_op(range_req("a", ""))],
        failure: vec![],
    };
    assert!(is_read_only(&req));
    let resp = read_txn(&*h.store.read_view(), &req).expect("txn");
    assert!(resp.succeeded);
    assert_eq!(resp.header.expect("header").revision, 2);
    let writes = TxnRequest { compare: vec![], success: vec![put_op("a", "2")], failure: vec![] };
    assert!(!is_read_only(&writes));
    assert!(read_txn(&*h.store.read_view(), &writes).is_err());
}

/// One sequence touching every table, for checking the encodings on a real engine.
fn scenario(h: &mut Harness) {
    h.grant(1, 10).expect("grant");
    h.put("a\u{0}b", "1"); // 2
    h.put_req(PutRequest { key: "a".into(), value: "1".into(), lease: 1, ..Default::default() }).expect("put"); // 3
    h.put("a\u{0}", "1"); // 4
    h.put("a\u{0}b", "2"); // 5
    h.put("\u{0}", "0"); // 6
    assert_eq!(h.keys(range_req("a", "\0")), ["a", "a\u{0}", "a\u{0}b"]);
    assert_eq!(h.keys(range_req("\0", "\0")), ["\u{0}", "a", "a\u{0}", "a\u{0}b"]);
    let at3 = h.range(RangeRequest { revision: 3, ..range_req("\0", "\0") }).expect("range");
    assert_eq!(strs(&at3.kvs), [("a".into(), "1".into()), ("a\u{0}b".into(), "1".into())]);
    h.compact(4).expect("compact");
    let at4 = h.range(RangeRequest { revision: 4, ..range_req("a", "b") }).expect("range");
    assert_eq!(
        strs(&at4.kvs),
        [("a".into(), "1".into()), ("a\u{0}".into(), "1".into()), ("a\u{0}b".into(), "1".into())]
    );
    h.apply(Request::LeaseRevoke(LeaseRevokeRequest { id: 1 })).expect("revoke"); // 7
    assert_eq!(h.keys(range_req("\0", "\0")), ["\u{0}", "a\u{0}", "a\u{0}b"]);
    let events = history(&*h.store.read_view(), 5, b"a", b"b", 10).expect("history");
    let revs: Vec<i64> = events.iter().map(|e| e.kv.as_ref().expect("kv").mod_revision).collect();
    assert_eq!(revs, [5, 7]);
    assert_eq!(events[0].prev_kv.as_ref().expect("prev").value, b"1");
    assert_eq!(h.rev(), 7);
}

#[test]
fn scenario_on_memstore() {
    scenario(&mut Harness::new());
}

#[test]
fn scenario_on_rocksdb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), TABLES).expect("open");
    scenario(&mut Harness::on(Box::new(store)));
}

#[test]
fn staged_reads_see_writes_handed_in() {
    // The runtime normally hands apply an empty WriteSet; a non-empty one is read through.
    let store = MemStore::new(TABLES);
    let sm = KvStateMachine::new();
    let mut writes = WriteSet::new();
    let first = encode_command(Request::Put(PutRequest { key: "k".into(), value: "1".into(), ..Default::default() }));
    let second = encode_command(Request::Put(PutRequest { key: "k".into(), value: "2".into(), ..Default::default() }));
    sm.apply(&store, &mut writes, 1, &first).expect("apply");
    sm.apply(&store, &mut writes, 2, &second).expect("apply");
    store.write(writes).expect("write");
    let kv = range(&store, &range_req("k", "")).expect("range").kvs.remove(0);
    assert_eq!((kv.version, kv.mod_revision, kv.value.as_slice()), (2, 3, &b"2"[..]));
}

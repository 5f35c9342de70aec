//! Property tests: random operations on the store and on a `BTreeMap`
//! agree, through commits, roll-backs, reopening and prefix scans, with a
//! cache small enough to be evicted all the time.

mod common;

use common::{Model, contents, fresh, value};
use proptest::prelude::*;
use skiff_store::{MemDevice, Options, Store, block_on, check};

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, usize),
    Delete(Vec<u8>),
    DeletePrefix(Vec<u8>),
    Commit,
    Rollback,
    Reopen,
    Scan(Vec<u8>),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A few hundred distinct keys under shared prefixes, so puts
    // overwrite, leaves split, and prefix deletes empty and merge them.
    (prop::sample::select(vec!["a/", "b/", "ab", "b"]), 0..200u32).prop_map(|(p, n)| format!("{p}{n:03}").into_bytes())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (key(), prop_oneof![8 => 0..500usize, 1 => 500..9000usize]).prop_map(|(k, n)| Op::Put(k, n)),
        8 => key().prop_map(Op::Delete),
        1 => prop::sample::select(vec!["a/", "b", "ab", "a/1", "b/0"]).prop_map(|p| Op::DeletePrefix(p.as_bytes().to_vec())),
        2 => Just(Op::Commit),
        1 => Just(Op::Rollback),
        1 => Just(Op::Reopen),
        1 => prop::sample::select(vec!["", "a", "a/", "b", "ab1", "b/05"]).prop_map(|p| Op::Scan(p.as_bytes().to_vec())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_a_btreemap(ops in prop::collection::vec(op(), 1..400)) {
        let options = Options { cache_pages: 8, ..Options::default() };
        let mut bytes = fresh(512, 512);
        let mut committed = Model::new();
        let mut working = committed.clone();
        let mut version = 0u64;
        let mut store = block_on(Store::open(MemDevice::from_bytes(512, bytes.clone()), options)).unwrap();
        // The operations since the last commit, replayed in one transaction.
        let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let run = |store: &Store<MemDevice>, pending: &[(Vec<u8>, Option<Vec<u8>>)], working: &Model, commit: bool| {
            block_on(async {
                let mut tx = store.write().await.unwrap();
                for (k, v) in pending {
                    match v {
                        Some(v) => tx.put(k, v).await.unwrap(),
                        None => {
                            tx.delete(k).await.unwrap();
                        }
                    }
                }
                assert_eq!(tx.len(), working.len() as u64);
                for (k, v) in working {
                    assert_eq!(tx.get(k).await.unwrap().as_ref(), Some(v), "the transaction's own view");
                }
                if commit {
                    tx.commit().await.unwrap();
                }
            })
        };
        for op in ops {
            version += 1;
            match op {
                Op::Put(k, n) => {
                    let v = value(&k, version, n);
                    working.insert(k.clone(), v.clone());
                    pending.push((k, Some(v)));
                }
                Op::Delete(k) => {
                    working.remove(&k);
                    pending.push((k, None));
                }
                Op::DeletePrefix(p) => {
                    let doomed: Vec<_> = working.keys().filter(|k| k.starts_with(&p)).cloned().collect();
                    for k in doomed {
                        working.remove(&k);
                        pending.push((k, None));
                    }
                }
                Op::Commit => {
                    run(&store, &pending, &working, true);
                    pending.clear();
                    committed = working.clone();
                }
                Op::Rollback => {
                    run(&store, &pending, &working, false);
                    pending.clear();
                    working = committed.clone();
                }
                Op::Reopen => {
                    pending.clear();
                    working = committed.clone();
                    bytes = store.into_device().into_bytes();
                    store = block_on(Store::open(MemDevice::from_bytes(512, bytes.clone()), options)).unwrap();
                }
                Op::Scan(prefix) => {
                    let snap = store.snapshot();
                    let got = block_on(snap.scan(&prefix).collect(usize::MAX)).unwrap();
                    let want: Vec<_> = committed.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
        run(&store, &pending, &working, true);
        committed = working;
        prop_assert_eq!(contents(&store).unwrap(), committed);
        let report = block_on(check(store.device())).unwrap();
        prop_assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

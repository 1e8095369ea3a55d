//! The store against a model (issue 8, test 6a): random sequences of operations —
//! puts, deletes, multi-write commands that fail their own checks or panic, commits
//! the disk refuses, commands submitted together (one group commit), prefix and
//! range scans — run on a real store in a temporary directory and on a `BTreeMap`,
//! with `Reopen` (shut down, open again) as one of the operations. After every
//! operation the whole store must read back exactly as the model says; a refused
//! write must have left no trace. A failing case prints its minimal sequence;
//! `PROPTEST_CASES=N` runs more.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Record, StorageError, Store, StoreOptions, Table};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Val(u64);
impl Record for Val {
    const SCHEMA: u8 = 1;
}

const FLAT: Table<String, Val> = Table::new("flat");
const NESTED: Table<(u64, String), Val> = Table::new("nested");

/// A write to one of the two tables; `None` deletes.
#[derive(Debug, Clone)]
enum Write {
    Flat(String, Option<u64>),
    Nested(u64, String, Option<u64>),
}

#[derive(Debug, Clone)]
enum Op {
    /// One command with these writes.
    Commit(Vec<Write>),
    /// A command whose own check fails after writing: discarded alone.
    Refused(Vec<Write>),
    /// A command that panics after writing: discarded alone.
    Panics(Vec<Write>),
    /// The disk refuses the commit: nothing is written, the store reopens itself.
    DiskFails(Vec<Write>),
    /// Several commands at once, committed together.
    Together(Vec<Vec<Write>>),
    ScanNested {
        prefix: u64,
        limit: usize,
        reverse: bool,
    },
    ScanUntil {
        from: Option<u64>,
        end: u64,
        limit: usize,
    },
    Reopen,
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("a".to_string()),
        Just("ab".to_string()),
        Just("a\0".to_string()),
        Just("b".to_string()),
        "[a-c\0]{0,3}",
    ]
}

fn write() -> impl Strategy<Value = Write> {
    let val = prop_oneof![3 => any::<u64>().prop_map(Some), 1 => Just(None)];
    prop_oneof![
        (key(), val.clone()).prop_map(|(k, v)| Write::Flat(k, v)),
        (0u64..4, key(), val).prop_map(|(n, k, v)| Write::Nested(n, k, v)),
    ]
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    proptest::collection::vec(write(), 1..5)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => writes().prop_map(Op::Commit),
        1 => writes().prop_map(Op::Refused),
        1 => writes().prop_map(Op::Panics),
        1 => writes().prop_map(Op::DiskFails),
        2 => proptest::collection::vec(writes(), 2..6).prop_map(Op::Together),
        2 => (0u64..5, 0usize..6, any::<bool>())
            .prop_map(|(prefix, limit, reverse)| Op::ScanNested { prefix, limit, reverse }),
        1 => (proptest::option::of(0u64..5), 0u64..5, 0usize..8)
            .prop_map(|(from, end, limit)| Op::ScanUntil { from, end, limit }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Clone, PartialEq, Eq, Debug)]
struct Model {
    flat: BTreeMap<String, u64>,
    nested: BTreeMap<(u64, String), u64>,
}

impl Model {
    fn apply(&mut self, writes: &[Write]) {
        for w in writes {
            match w.clone() {
                Write::Flat(k, Some(v)) => {
                    self.flat.insert(k, v);
                }
                Write::Flat(k, None) => {
                    self.flat.remove(&k);
                }
                Write::Nested(n, k, Some(v)) => {
                    self.nested.insert((n, k), v);
                }
                Write::Nested(n, k, None) => {
                    self.nested.remove(&(n, k));
                }
            }
        }
    }
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(StoreOptions::new(dir, vec!["flat", "nested"])).expect("opens")
}

/// Submits one command making `writes`; `verdict` decides how it ends.
async fn submit(
    store: &Store,
    writes: Vec<Write>,
    verdict: fn() -> Result<(), String>,
) -> crate::Result<Result<(), String>> {
    store
        .submit(move |ctx| {
            for w in writes {
                match w {
                    Write::Flat(k, Some(v)) => ctx.put(&FLAT, &k, &Val(v)),
                    Write::Flat(k, None) => ctx.delete(&FLAT, &k),
                    Write::Nested(n, k, Some(v)) => ctx.put(&NESTED, &(n, k), &Val(v)),
                    Write::Nested(n, k, None) => ctx.delete(&NESTED, &(n, k)),
                }
            }
            verdict()
        })
        .await
}

fn read_all(store: &Store) -> Model {
    let view = store.read().expect("read");
    Model {
        flat: view
            .scan_prefix(&FLAT, &(), usize::MAX, false)
            .expect("scan")
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
        nested: view
            .scan_prefix(&NESTED, &(), usize::MAX, false)
            .expect("scan")
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    }
}

async fn wait_healthy(store: &Store) {
    for _ in 0..400 {
        if store.is_healthy() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the store never reopened");
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(dir.path());
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Commit(w) => {
                submit(&store, w.clone(), || Ok(()))
                    .await
                    .expect("stored")
                    .expect("ok");
                model.apply(&w);
            }
            Op::Refused(w) => {
                let r = submit(&store, w, || Err("check failed".into())).await;
                prop_assert!(matches!(r, Ok(Err(_))));
            }
            Op::Panics(w) => {
                let r = submit(&store, w, || panic!("a bug in a command")).await;
                prop_assert!(matches!(r, Err(StorageError::CommandPanicked)));
            }
            Op::DiskFails(w) => {
                store.fail_next_commits(1);
                let r = submit(&store, w, || Ok(())).await;
                prop_assert!(matches!(r, Err(StorageError::Unavailable)), "{r:?}");
                wait_healthy(&store).await;
            }
            Op::Together(batch) => {
                let mut tasks = Vec::new();
                for w in batch.clone() {
                    let s = store.clone();
                    tasks.push(tokio::spawn(async move { submit(&s, w, || Ok(())).await }));
                }
                for t in tasks {
                    t.await.expect("task").expect("stored").expect("ok");
                }
                // Commands are applied in submission order within a group commit.
                for w in &batch {
                    model.apply(w);
                }
            }
            Op::ScanNested {
                prefix,
                limit,
                reverse,
            } => {
                let got: Vec<_> = store
                    .read()
                    .expect("read")
                    .scan_prefix(&NESTED, &prefix, limit, reverse)
                    .expect("scan")
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                let matching = model.nested.iter().filter(|((n, _), _)| *n == prefix);
                let want: Vec<_> = if reverse {
                    matching
                        .rev()
                        .take(limit)
                        .map(|(k, v)| (k.clone(), *v))
                        .collect()
                } else {
                    matching.take(limit).map(|(k, v)| (k.clone(), *v)).collect()
                };
                prop_assert_eq!(got, want);
            }
            Op::ScanUntil { from, end, limit } => {
                let end_key = crate::Key::to_bytes(&(end, String::new()));
                let from_key = from.map(|f| crate::Key::to_bytes(&f));
                let got: Vec<_> = store
                    .read()
                    .expect("read")
                    .scan_until(&NESTED, from_key.as_deref(), &end_key, limit)
                    .expect("scan")
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                let want: Vec<_> = model
                    .nested
                    .iter()
                    .filter(|((n, _), _)| *n < end && from.is_none_or(|f| *n >= f))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Reopen => {
                store.shutdown().await;
                store = open(dir.path());
            }
        }
        prop_assert_eq!(&read_all(&store), &model);
    }
    store.shutdown().await;
    let reopened = open(dir.path());
    prop_assert_eq!(&read_all(&reopened), &model);
    reopened.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
    ))]

    #[test]
    fn the_store_reads_back_as_a_btreemap_model_across_failures_and_reopens(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(run(ops))?;
    }
}

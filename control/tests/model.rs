//! Model test: random batches of namespace mutations applied to the real
//! store (one group-commit transaction per batch) must give the same
//! per-operation outcomes and the same tree as a simple in-memory model
//! applying them one by one. A mutation that fails must leave no trace,
//! which is what "no half-applied change" means.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ringfs_control::records::Kind;
use ringfs_control::store::{CreateOptions, FileDefaults, MetaStore, Mutation};
use ringfs_control::ControlError;

/// Error codes compared between model and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    NotFound,
    Exists,
    NotDirectory,
    IsDirectory,
    NotEmpty,
    Invalid,
}

fn code(e: &ControlError) -> Code {
    match e {
        ControlError::NotFound(_) => Code::NotFound,
        ControlError::Exists(_) => Code::Exists,
        ControlError::NotDirectory(_) => Code::NotDirectory,
        ControlError::IsDirectory(_) => Code::IsDirectory,
        ControlError::NotEmpty(_) => Code::NotEmpty,
        ControlError::InvalidArgument(_) => Code::Invalid,
        other => panic!("unexpected error from the store: {other}"),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create(String, bool),
    Mkdir(String),
    Unlink(String),
    Rmdir(String),
    Rename(String, String),
    /// chmod + utimes.
    SetAttr(String),
}

/// The namespace as a map from path to kind; the root is implicit.
#[derive(Default, Debug)]
struct Model {
    entries: BTreeMap<String, Kind>,
}

fn parent_and_name(path: &str) -> (&str, &str) {
    let i = path.rfind('/').unwrap();
    (if i == 0 { "/" } else { &path[..i] }, &path[i + 1..])
}

impl Model {
    fn kind(&self, path: &str) -> Option<Kind> {
        if path == "/" {
            Some(Kind::Directory)
        } else {
            self.entries.get(path).copied()
        }
    }

    /// Mirrors the store's walk: each step must be a directory, then exist.
    fn check_dir(&self, dir: &str) -> Result<(), Code> {
        let mut cur = String::from("/");
        for name in dir.split('/').filter(|s| !s.is_empty()) {
            if self.kind(&cur) != Some(Kind::Directory) {
                return Err(Code::NotDirectory);
            }
            let next = if cur == "/" {
                format!("/{name}")
            } else {
                format!("{cur}/{name}")
            };
            if self.kind(&next).is_none() {
                return Err(Code::NotFound);
            }
            cur = next;
        }
        match self.kind(&cur) {
            Some(Kind::Directory) => Ok(()),
            _ => Err(Code::NotDirectory),
        }
    }

    fn is_empty_dir(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        !self.entries.keys().any(|k| k.starts_with(&prefix))
    }

    fn apply(&mut self, op: &Op) -> Result<(), Code> {
        match op {
            Op::SetAttr(p) => {
                self.check_dir(parent_and_name(p).0)?;
                self.kind(p).map(drop).ok_or(Code::NotFound)
            }
            Op::Create(p, exclusive) => {
                self.check_dir(parent_and_name(p).0)?;
                match (self.kind(p), exclusive) {
                    (Some(_), true) => Err(Code::Exists),
                    (Some(Kind::Directory), false) => Err(Code::IsDirectory),
                    (Some(Kind::File), false) => Ok(()),
                    (None, _) => {
                        self.entries.insert(p.clone(), Kind::File);
                        Ok(())
                    }
                }
            }
            Op::Mkdir(p) => {
                self.check_dir(parent_and_name(p).0)?;
                if self.kind(p).is_some() {
                    return Err(Code::Exists);
                }
                self.entries.insert(p.clone(), Kind::Directory);
                Ok(())
            }
            Op::Unlink(p) | Op::Rmdir(p) => {
                let want_dir = matches!(op, Op::Rmdir(_));
                self.check_dir(parent_and_name(p).0)?;
                match (self.kind(p), want_dir) {
                    (None, _) => Err(Code::NotFound),
                    (Some(Kind::Directory), false) => Err(Code::IsDirectory),
                    (Some(Kind::File), true) => Err(Code::NotDirectory),
                    (Some(Kind::Directory), true) if !self.is_empty_dir(p) => Err(Code::NotEmpty),
                    _ => {
                        self.entries.remove(p);
                        Ok(())
                    }
                }
            }
            Op::Rename(from, to) => {
                self.check_dir(parent_and_name(from).0)?;
                self.check_dir(parent_and_name(to).0)?;
                let Some(kind) = self.kind(from) else {
                    return Err(Code::NotFound);
                };
                if from == to {
                    return Ok(());
                }
                let to_parent = parent_and_name(to).0;
                if kind == Kind::Directory
                    && (to_parent == from || to_parent.starts_with(&format!("{from}/")))
                {
                    return Err(Code::Invalid);
                }
                match (kind, self.kind(to)) {
                    (Kind::File, Some(Kind::Directory)) => return Err(Code::IsDirectory),
                    (Kind::Directory, Some(Kind::File)) => return Err(Code::NotDirectory),
                    (Kind::Directory, Some(Kind::Directory)) if !self.is_empty_dir(to) => {
                        return Err(Code::NotEmpty)
                    }
                    _ => {}
                }
                self.entries.remove(to);
                let prefix = format!("{from}/");
                let moved: Vec<_> = self
                    .entries
                    .keys()
                    .filter(|k| *k == from || k.starts_with(&prefix))
                    .cloned()
                    .collect();
                for old in moved {
                    let k = self.entries.remove(&old).unwrap();
                    self.entries
                        .insert(format!("{to}{}", &old[from.len()..]), k);
                }
                Ok(())
            }
        }
    }
}

fn to_mutation(op: &Op) -> Mutation {
    match op.clone() {
        Op::Create(path, exclusive) => Mutation::Create {
            who: ringfs_control::store::Caller::admin(),
            path,
            options: CreateOptions {
                exclusive,
                ..Default::default()
            },
            now_ns: 1,
        },
        Op::Mkdir(path) => Mutation::Mkdir {
            who: ringfs_control::store::Caller::admin(),
            path,
            mode: 0,
            now_ns: 1,
        },
        Op::Unlink(path) => Mutation::Unlink {
            who: ringfs_control::store::Caller::admin(),
            path,
            now_ns: 1,
        },
        Op::Rmdir(path) => Mutation::Rmdir {
            who: ringfs_control::store::Caller::admin(),
            path,
            now_ns: 1,
        },
        Op::Rename(from, to) => Mutation::Rename {
            who: ringfs_control::store::Caller::admin(),
            from,
            to,
            now_ns: 1,
        },
        Op::SetAttr(path) => Mutation::SetAttr {
            who: ringfs_control::store::Caller::admin(),
            path,
            change: ringfs_control::store::AttrChange {
                mode: Some(0o600),
                mtime_ns: Some(7),
                ..Default::default()
            },
        },
    }
}

/// The store's whole tree as (path, kind), walked through `list`.
fn walk(store: &MetaStore) -> BTreeMap<String, Kind> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::from("/")];
    while let Some(dir) = stack.pop() {
        let mut after = String::new();
        loop {
            let (entries, more) = store.list(&dir, &after, 2).unwrap();
            for e in &entries {
                let p = if dir == "/" {
                    format!("/{}", e.name)
                } else {
                    format!("{dir}/{}", e.name)
                };
                assert_eq!(store.stat(&p).unwrap().1, e.attr);
                if e.attr.kind == Kind::Directory {
                    stack.push(p.clone());
                }
                out.insert(p, e.attr.kind);
            }
            match entries.last() {
                Some(last) if more => after = last.name.clone(),
                _ => break,
            }
        }
    }
    out
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
        .prop_map(|names| format!("/{}", names.join("/")))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (path(), any::<bool>()).prop_map(|(p, x)| Op::Create(p, x)),
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Mkdir),
        path().prop_map(Op::Unlink),
        path().prop_map(Op::Rmdir),
        (path(), path()).prop_map(|(a, b)| Op::Rename(a, b)),
        path().prop_map(Op::SetAttr),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn store_matches_model(batches in prop::collection::vec(prop::collection::vec(op(), 1..8), 1..12)) {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta.redb"), FileDefaults::default()).unwrap();
        let mut model = Model::default();
        for batch in &batches {
            let mutations: Vec<_> = batch.iter().map(to_mutation).collect();
            let results = store.apply_batch(&mutations).unwrap();
            for (op, result) in batch.iter().zip(results) {
                let expected = model.apply(op);
                let got = result.map(|_| ()).map_err(|e| code(&e));
                prop_assert_eq!(got, expected, "op {:?}", op);
            }
            prop_assert_eq!(walk(&store), model.entries.clone());
            prop_assert_eq!(store.consistency_problems().unwrap(), Vec::<String>::new());
        }
    }
}

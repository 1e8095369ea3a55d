//! What a power cut leaves on disk, rebuilt from the recorder's log
//! (`tests/powercut/shim.c`): the directory as it was before payd started, plus only
//! the operations a completed sync made durable.
//!
//! The rules (POSIX-conservative, stricter than ext4 or xfs in practice):
//! - a data operation (write, truncate, allocation) on a file is durable when an
//!   fsync or fdatasync *of that file* began after it completed and returned 0;
//! - a directory-entry operation (create, rename, link, unlink, mkdir, rmdir) is
//!   durable when an fsync *of its parent directory* (both parents for a rename or a
//!   link) began after it and returned 0 — fsyncing a new file does not make its name
//!   durable;
//! - `sync_file_range` is not a barrier (no metadata, no device flush); `sync` and
//!   `syncfs` cover everything before them;
//! - what was not made durable may be gone, or partly there: a [`Cut`] says how much
//!   of it survives (nothing, a torn first write per file, an in-order prefix with a
//!   torn last write, or any subset of the writes with holes left as zeros).
//!
//! Files are tracked by node (inode number plus a generation bumped at each create),
//! so a rename or an unlinked-and-reused inode number never mixes two files' data.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::Rng;

const K_WRITE: u8 = 1;
const K_DONE: u8 = 2;
const K_TRUNCATE: u8 = 3;
const K_CREATE: u8 = 4;
const K_RENAME: u8 = 5;
const K_UNLINK: u8 = 6;
const K_MKDIR: u8 = 7;
const K_LINK: u8 = 8;
const K_SYNC: u8 = 9;
const K_RMDIR: u8 = 10;
const K_FALLOCATE: u8 = 11;
const K_SYNCALL: u8 = 12;
const FALLOC_FL_KEEP_SIZE: i64 = 1;

/// One record of the recorder's log.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    kind: u8,
    seq: u64,
    /// When it was logged (wall clock, nanoseconds since the epoch).
    pub(crate) t_ns: i64,
    a: i64,
    b: i64,
    c: i64,
    path: String,
    path2: String,
    data: Vec<u8>,
}

pub(crate) fn parse_log(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut i = 0;
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let i64_at = |i: usize| i64::from_le_bytes(bytes[i..i + 8].try_into().unwrap());
    // A record is written with one write(2) to an O_APPEND file, so a SIGKILL cannot
    // leave half of one; a short tail would still be ignored.
    while i + 4 <= bytes.len() {
        let total = u32_at(i);
        if i + 4 + total > bytes.len() {
            break;
        }
        let mut p = i + 4;
        let kind = bytes[p];
        p += 1;
        let seq = i64_at(p) as u64;
        let t_ns = i64_at(p + 8);
        let (a, b, c) = (i64_at(p + 16), i64_at(p + 24), i64_at(p + 32));
        p += 40;
        let mut field = || {
            let n = u32_at(p);
            let v = bytes[p + 4..p + 4 + n].to_vec();
            p += 4 + n;
            v
        };
        let path = String::from_utf8(field()).unwrap();
        let path2 = String::from_utf8(field()).unwrap();
        let data = field();
        out.push(Rec {
            kind,
            seq,
            t_ns,
            a,
            b,
            c,
            path,
            path2,
            data,
        });
        i += 4 + total;
    }
    out
}

impl Rec {
    /// A DONE record closing a successful write.
    pub(crate) fn is_write_done(&self, log: &[Rec]) -> bool {
        self.kind == K_DONE
            && self.b > 0
            && log
                .iter()
                .rev()
                .find(|r| r.seq == self.a as u64)
                .is_some_and(|r| r.kind == K_WRITE)
    }
}

type Node = (u64, u32);

#[derive(Debug, Clone)]
enum Op {
    Write { node: Node, off: u64, data: Vec<u8> },
    Truncate { node: Node, len: u64 },
    Extend { node: Node, len: u64 },
    Create { path: String, node: Node },
    Rename { from: String, to: String },
    Link { from: String, to: String },
    Unlink { path: String },
    Mkdir { path: String },
    Rmdir { path: String },
}

impl Op {
    fn node(&self) -> Option<Node> {
        match self {
            Op::Write { node, .. } | Op::Truncate { node, .. } | Op::Extend { node, .. } => {
                Some(*node)
            }
            _ => None,
        }
    }

    /// The directories whose fsync makes this entry operation durable.
    fn parents(&self) -> Vec<String> {
        let parent = |p: &str| {
            Path::new(p)
                .parent()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match self {
            Op::Create { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path }
            | Op::Rmdir { path } => vec![parent(path)],
            Op::Rename { from, to } | Op::Link { from, to } => vec![parent(from), parent(to)],
            _ => Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Dir,
    File { ino: u64, data: Vec<u8> },
}

/// A directory tree in memory, keyed by absolute path.
pub(crate) type Tree = BTreeMap<String, Entry>;

pub(crate) fn read_tree(root: &Path) -> Tree {
    use std::os::unix::fs::MetadataExt;
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let key = path.to_string_lossy().into_owned();
            if meta.is_dir() {
                out.insert(key, Entry::Dir);
                stack.push(path);
            } else {
                out.insert(
                    key,
                    Entry::File {
                        ino: meta.ino(),
                        data: std::fs::read(&path).unwrap(),
                    },
                );
            }
        }
    }
    out
}

/// `tree` moved from under `from` to under `to`.
pub(crate) fn rebase(tree: &Tree, from: &str, to: &Path) -> Tree {
    tree.iter()
        .map(|(p, e)| {
            (
                format!("{}{}", to.display(), p.strip_prefix(from).unwrap_or(p)),
                e.clone(),
            )
        })
        .collect()
}

pub(crate) fn write_tree(root: &Path, tree: &Tree) {
    // The directory itself, even when nothing in it survived (a cut in the first
    // milliseconds of the first start).
    std::fs::create_dir_all(root).unwrap();
    // Paths sort parent before child.
    for (path, e) in tree {
        let p = PathBuf::from(path);
        assert!(p.starts_with(root), "{path} outside {}", root.display());
        match e {
            Entry::Dir => std::fs::create_dir_all(&p).unwrap(),
            Entry::File { data, .. } => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, data).unwrap();
            }
        }
    }
}

/// How much of what no sync covered survives the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Only what a sync covered.
    Strict,
    /// Plus the first unsynced write of each file, torn at a random byte.
    TornFirstWrite,
    /// Plus a random in-order prefix of all unsynced operations, its last write torn.
    Prefix,
    /// Plus any subset of the unsynced writes (skipped ranges read back as zeros,
    /// as after delayed allocation); unsynced entry operations are lost.
    Holes,
}

impl Cut {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cut::Strict => "cuts: strict",
            Cut::TornFirstWrite => "cuts: torn first write",
            Cut::Prefix => "cuts: unsynced prefix kept",
            Cut::Holes => "cuts: unsynced writes kept with holes",
        }
    }
}

pub(crate) const CUTS: [Cut; 4] = [Cut::Strict, Cut::TornFirstWrite, Cut::Prefix, Cut::Holes];

/// The log resolved to operations on nodes, with, for each, whether a sync covered it.
pub(crate) struct History {
    ops: Vec<Op>,
    durable: Vec<bool>,
    /// The last operation, if payd was killed while it ran (its intent is logged,
    /// its result is not): it may or may not have happened.
    in_flight: Option<Op>,
    snapshot_nodes: HashMap<String, Node>,
    pub(crate) syncs: usize,
    /// Renames seen only through their effect (see `resolve`).
    pub(crate) inferred_renames: usize,
}

pub(crate) fn resolve(snapshot: &Tree, log: &[Rec]) -> History {
    let mut current: HashMap<u64, Node> = HashMap::new();
    let mut snapshot_nodes = HashMap::new();
    for (path, e) in snapshot {
        if let Entry::File { ino, .. } = e {
            current.insert(*ino, (*ino, 0));
            snapshot_nodes.insert(path.clone(), (*ino, 0));
        }
    }
    let mut gens: HashMap<u64, u32> = HashMap::new();
    let results: HashMap<u64, (i64, i64)> = log
        .iter()
        .filter(|r| r.kind == K_DONE)
        .map(|r| (r.a as u64, (r.b, r.c)))
        .collect();
    // (op index or sync marker) in log order.
    enum Item {
        Op(Op),
        FileSync(Node),
        DirSync(String),
        SyncAll,
    }
    let mut items = Vec::new();
    let mut in_flight = None;
    let node_of = |current: &HashMap<u64, Node>, ino: i64, r: &Rec| -> Node {
        *current
            .get(&(ino as u64))
            .unwrap_or_else(|| panic!("recorder: unknown inode {ino} in {r:?}"))
    };
    // Where each file is now, to see renames the recorder could not: tempfile (used
    // by fjall to replace its `current` version pointer) renames through rustix's raw
    // syscalls, which no LD_PRELOAD sees. A later fsync or write names the file by
    // its new path; the rename is placed just before it — as late as it can have
    // happened, so it is never taken for durable earlier than it was.
    let mut node_path: HashMap<Node, String> = snapshot_nodes
        .iter()
        .map(|(p, n): (&String, &Node)| (*n, p.clone()))
        .collect();
    let mut inferred = 0;
    for r in log.iter().filter(|r| r.kind != K_DONE) {
        let result = results.get(&r.seq).copied();
        let names_file =
            matches!(r.kind, K_WRITE | K_TRUNCATE | K_FALLOCATE) || (r.kind == K_SYNC && r.c == 0);
        if names_file
            && !r.path.ends_with(" (deleted)")
            && let Some(node) = current.get(&(r.a as u64)).copied()
            && let Some(old) = node_path.get(&node).cloned()
            && old != r.path
        {
            node_path.retain(|_, p| *p != r.path);
            node_path.insert(node, r.path.clone());
            items.push(Item::Op(Op::Rename {
                from: old,
                to: r.path.clone(),
            }));
            inferred += 1;
        }
        if r.kind == K_SYNC || r.kind == K_SYNCALL {
            // A sync counts only if it returned 0; sync_file_range (b == 2) never.
            if result.map(|(ret, _)| ret) != Some(0) || (r.kind == K_SYNC && r.b == 2) {
                continue;
            }
            if r.kind == K_SYNCALL {
                items.push(Item::SyncAll);
            } else if r.c == 1 {
                // A directory is keyed by its path (payd never renames one).
                items.push(Item::DirSync(r.path.clone()));
            } else {
                items.push(Item::FileSync(node_of(&current, r.a, r)));
            }
            continue;
        }
        let op = match r.kind {
            K_WRITE => {
                let n = match result {
                    Some((ret, _)) if ret >= 0 => ret as usize,
                    Some(_) => continue,
                    None => r.data.len(),
                };
                Op::Write {
                    node: node_of(&current, r.a, r),
                    off: r.b as u64,
                    data: r.data[..n.min(r.data.len())].to_vec(),
                }
            }
            K_TRUNCATE => Op::Truncate {
                node: node_of(&current, r.a, r),
                len: r.b as u64,
            },
            K_FALLOCATE => {
                if result.is_some_and(|(_, mode)| mode & FALLOC_FL_KEEP_SIZE != 0) {
                    continue;
                }
                Op::Extend {
                    node: node_of(&current, r.a, r),
                    len: (r.b + r.c) as u64,
                }
            }
            K_CREATE => {
                let Some((ret, ino)) = result else {
                    // Killed during the open: the new inode is unknown, and nothing
                    // can have been written to it.
                    in_flight = Some(Op::Create {
                        path: r.path.clone(),
                        node: (u64::MAX, 0),
                    });
                    continue;
                };
                if ret < 0 {
                    continue;
                }
                let ino = ino as u64;
                let g = gens.entry(ino).or_insert(0);
                *g += 1;
                let node = (ino, *g);
                current.insert(ino, node);
                Op::Create {
                    path: r.path.clone(),
                    node,
                }
            }
            K_RENAME => Op::Rename {
                from: r.path.clone(),
                to: r.path2.clone(),
            },
            K_LINK => Op::Link {
                from: r.path.clone(),
                to: r.path2.clone(),
            },
            K_UNLINK => Op::Unlink {
                path: r.path.clone(),
            },
            K_MKDIR => Op::Mkdir {
                path: r.path.clone(),
            },
            K_RMDIR => Op::Rmdir {
                path: r.path.clone(),
            },
            k => panic!("recorder: unknown record kind {k}"),
        };
        match result {
            None => in_flight = Some(op),
            Some((ret, _)) if ret < 0 => {}
            Some(_) => {
                match &op {
                    Op::Create { path, node } => {
                        node_path.retain(|_, p| p != path);
                        node_path.insert(*node, path.clone());
                    }
                    Op::Rename { from, to } => {
                        node_path.retain(|_, p| p != to);
                        for p in node_path.values_mut() {
                            if p == from {
                                *p = to.clone();
                            }
                        }
                    }
                    Op::Unlink { path } => node_path.retain(|_, p| p != path),
                    _ => {}
                }
                items.push(Item::Op(op));
            }
        }
    }
    // Durability: walk backwards remembering which files and directories a later
    // sync covers.
    let mut synced_nodes = std::collections::HashSet::new();
    let mut synced_dirs = std::collections::HashSet::new();
    let mut all = false;
    let mut ops = Vec::new();
    let mut durable = Vec::new();
    let mut syncs = 0;
    for item in items.into_iter().rev() {
        match item {
            Item::SyncAll => {
                all = true;
                syncs += 1;
            }
            Item::FileSync(n) => {
                synced_nodes.insert(n);
                syncs += 1;
            }
            Item::DirSync(d) => {
                synced_dirs.insert(d);
                syncs += 1;
            }
            Item::Op(op) => {
                let d = all
                    || match op.node() {
                        Some(n) => synced_nodes.contains(&n),
                        None => op.parents().iter().all(|p| synced_dirs.contains(p)),
                    };
                ops.push(op);
                durable.push(d);
            }
        }
    }
    ops.reverse();
    durable.reverse();
    History {
        ops,
        durable,
        in_flight,
        snapshot_nodes,
        syncs,
        inferred_renames: inferred,
    }
}

impl History {
    /// Every operation, one a line, for the evidence of a failure.
    pub(crate) fn describe(&self, root: &str) -> String {
        let short = |p: &str| p.strip_prefix(root).unwrap_or(p).to_string();
        let mut out = String::new();
        let mut snap: Vec<_> = self.snapshot_nodes.iter().collect();
        snap.sort();
        for (p, n) in snap {
            out.push_str(&format!("snapshot {} {n:?}\n", short(p)));
        }
        for (op, d) in self.ops.iter().zip(&self.durable) {
            let line = match op {
                Op::Write { node, off, data } => {
                    format!("write {node:?} at {off} len {}", data.len())
                }
                Op::Truncate { node, len } => format!("truncate {node:?} to {len}"),
                Op::Extend { node, len } => format!("extend {node:?} to {len}"),
                Op::Create { path, node } => format!("create {} {node:?}", short(path)),
                Op::Rename { from, to } => format!("rename {} -> {}", short(from), short(to)),
                Op::Link { from, to } => format!("link {} -> {}", short(from), short(to)),
                Op::Unlink { path } => format!("unlink {}", short(path)),
                Op::Mkdir { path } => format!("mkdir {}", short(path)),
                Op::Rmdir { path } => format!("rmdir {}", short(path)),
            };
            out.push_str(&format!(
                "{} {line}\n",
                if *d { "durable" } else { "LOST?  " }
            ));
        }
        if let Some(op) = &self.in_flight {
            out.push_str(&format!("in flight: {op:?}\n"));
        }
        out
    }

    pub(crate) fn ops_len(&self) -> usize {
        self.ops.len()
    }

    /// Operations per (kind, file name with digits masked, durable): what the
    /// storage engine does, for `PAYD_POWERCUT_DEBUG`.
    pub(crate) fn breakdown(&self, root: &str) -> BTreeMap<String, usize> {
        let mut paths: HashMap<Node, String> = self
            .snapshot_nodes
            .iter()
            .map(|(p, n)| (*n, p.clone()))
            .collect();
        let mut out = BTreeMap::new();
        let mask = |p: &str| -> String {
            let p = p.strip_prefix(root).unwrap_or(p);
            let p = match p.find(".tmp") {
                Some(i) => format!("{}.tmp*", &p[..i]),
                None => p.to_string(),
            };
            p.chars()
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect()
        };
        for (op, d) in self.ops.iter().zip(&self.durable) {
            let (kind, path) = match op {
                Op::Write { node, .. } => ("write", paths.get(node).cloned().unwrap_or_default()),
                Op::Truncate { node, .. } => {
                    ("truncate", paths.get(node).cloned().unwrap_or_default())
                }
                Op::Extend { node, .. } => {
                    ("fallocate", paths.get(node).cloned().unwrap_or_default())
                }
                Op::Create { path, node } => {
                    paths.insert(*node, path.clone());
                    ("create", path.clone())
                }
                Op::Rename { from, to } => ("rename", format!("{from} -> {}", mask(to))),
                Op::Link { from, .. } => ("link", from.clone()),
                Op::Unlink { path } => ("unlink", path.clone()),
                Op::Mkdir { path } => ("mkdir", path.clone()),
                Op::Rmdir { path } => ("rmdir", path.clone()),
            };
            let key = format!(
                "{kind} {} {}",
                mask(&path),
                if *d { "durable" } else { "NOT durable" }
            );
            *out.entry(key).or_default() += 1;
        }
        out
    }
}

struct Image {
    names: BTreeMap<String, Option<Node>>, // None = directory
    data: HashMap<Node, Vec<u8>>,
}

impl Image {
    fn from(snapshot: &Tree, h: &History) -> Image {
        let mut names = BTreeMap::new();
        let mut data = HashMap::new();
        for (path, e) in snapshot {
            match e {
                Entry::Dir => {
                    names.insert(path.clone(), None);
                }
                Entry::File { data: d, .. } => {
                    let n = h.snapshot_nodes[path];
                    names.insert(path.clone(), Some(n));
                    data.insert(n, d.clone());
                }
            }
        }
        Image { names, data }
    }

    fn apply(&mut self, op: &Op, torn: Option<usize>) {
        match op {
            Op::Write { node, off, data } => {
                let d = &data[..torn.unwrap_or(data.len()).min(data.len())];
                let f = self.data.entry(*node).or_default();
                let end = *off as usize + d.len();
                if f.len() < end {
                    f.resize(end, 0);
                }
                f[*off as usize..end].copy_from_slice(d);
            }
            Op::Truncate { node, len } => {
                self.data.entry(*node).or_default().resize(*len as usize, 0)
            }
            Op::Extend { node, len } => {
                let f = self.data.entry(*node).or_default();
                if f.len() < *len as usize {
                    f.resize(*len as usize, 0);
                }
            }
            Op::Create { path, node } => {
                self.data.insert(*node, Vec::new());
                self.names.insert(path.clone(), Some(*node));
            }
            Op::Rename { from, to } => {
                // A directory rename moves its subtree.
                let moved: Vec<(String, Option<Node>)> = self
                    .names
                    .iter()
                    .filter(|(p, _)| *p == from || p.starts_with(&format!("{from}/")))
                    .map(|(p, n)| (p.clone(), *n))
                    .collect();
                if moved.is_empty() {
                    return;
                }
                for (p, n) in moved {
                    self.names.remove(&p);
                    self.names.insert(format!("{to}{}", &p[from.len()..]), n);
                }
            }
            Op::Link { from, to } => {
                if let Some(n) = self.names.get(from).copied() {
                    self.names.insert(to.clone(), n);
                }
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                self.names.remove(path);
            }
            Op::Mkdir { path } => {
                self.names.insert(path.clone(), None);
            }
        }
    }

    fn tree(&self, root: &str) -> Tree {
        let mut out = Tree::new();
        for (path, n) in &self.names {
            // An entry whose directory did not survive is gone with it.
            let orphan = Path::new(path).ancestors().skip(1).any(|a| {
                let a = a.to_string_lossy();
                a.len() > root.len() && !matches!(self.names.get(a.as_ref()), Some(None))
            });
            if orphan {
                continue;
            }
            out.insert(
                path.clone(),
                match n {
                    None => Entry::Dir,
                    Some(node) => Entry::File {
                        ino: node.0,
                        data: self.data.get(node).cloned().unwrap_or_default(),
                    },
                },
            );
        }
        out
    }
}

/// Every logged operation applied: must equal the directory payd left behind, or
/// the recorder missed something. Returns the paths that differ (empty when whole).
pub(crate) fn recorder_gaps(
    snapshot: &Tree,
    h: &History,
    root: &str,
    actual: &Tree,
) -> Vec<String> {
    let mut tried = Vec::new();
    for with_in_flight in [false, true] {
        let mut img = Image::from(snapshot, h);
        for op in &h.ops {
            img.apply(op, None);
        }
        if with_in_flight {
            match &h.in_flight {
                Some(op) => img.apply(op, None),
                None => continue,
            }
        }
        let replayed = img.tree(root);
        let gaps = diff(&replayed, actual);
        if gaps.is_empty() {
            return gaps;
        }
        tried = gaps;
    }
    tried
}

fn diff(a: &Tree, b: &Tree) -> Vec<String> {
    let strip = |e: &Entry| match e {
        Entry::Dir => None,
        Entry::File { data, .. } => Some(data.clone()),
    };
    let mut out = Vec::new();
    for k in a.keys().chain(b.keys()) {
        if a.get(k).map(strip) != b.get(k).map(strip) && !out.contains(k) {
            out.push(k.clone());
        }
    }
    out
}

/// Counts for the report.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CutStats {
    pub(crate) ops: usize,
    pub(crate) durable: usize,
    pub(crate) lost_bytes: usize,
}

/// The directory as the power cut leaves it.
pub(crate) fn after_power_loss(
    snapshot: &Tree,
    h: &History,
    root: &str,
    cut: Cut,
    rng: &mut impl Rng,
) -> (Tree, CutStats) {
    let mut img = Image::from(snapshot, h);
    let mut stats = CutStats {
        ops: h.ops.len(),
        ..CutStats::default()
    };
    // The operation payd was killed in may have happened, wholly or partly.
    let mut ops = h.ops.clone();
    let mut durable = h.durable.clone();
    if let Some(op) = &h.in_flight
        && !matches!(
            op,
            Op::Create {
                node: (u64::MAX, _),
                ..
            }
        )
    {
        ops.push(op.clone());
        durable.push(false);
    }
    let unsynced: Vec<usize> = (0..ops.len()).filter(|&i| !durable[i]).collect();
    let prefix_len = if unsynced.is_empty() {
        0
    } else {
        rng.random_range(0..=unsynced.len())
    };
    let mut torn_seen = std::collections::HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        if durable[i] {
            stats.durable += 1;
            img.apply(op, None);
            continue;
        }
        let len = match op {
            Op::Write { data, .. } => Some(data.len()),
            _ => None,
        };
        let rank = unsynced.iter().position(|&u| u == i).unwrap_or(0);
        let keep = match cut {
            Cut::Strict => None,
            Cut::TornFirstWrite => match (op.node(), len) {
                (Some(n), Some(l)) if torn_seen.insert(n) => Some(Some(rng.random_range(0..=l))),
                _ => None,
            },
            Cut::Prefix if rank + 1 < prefix_len => Some(None),
            Cut::Prefix if rank + 1 == prefix_len => Some(len.map(|l| rng.random_range(0..=l))),
            Cut::Prefix => None,
            Cut::Holes if len.is_some() && rng.random_bool(0.5) => Some(None),
            Cut::Holes => None,
        };
        match keep {
            Some(torn) => {
                if let (Some(l), Some(t)) = (len, torn) {
                    stats.lost_bytes += l - t.min(l);
                }
                img.apply(op, torn);
            }
            None => stats.lost_bytes += len.unwrap_or(0),
        }
    }
    (img.tree(root), stats)
}

//! The store: read snapshots, and one writer thread that group-commits commands.
//!
//! Why one writer applying *commands* rather than callers writing values: state shared
//! between orders (a user's entitlements, idempotency keys, indexes) must never be
//! computed from a stale snapshot. Each command reads and writes inside the writer's
//! transaction, so it always sees every command committed before it, and the batch
//! is made durable with one `fdatasync` before any caller is answered.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fjall::{
    KeyspaceCreateOptions, PersistMode, Readable, SingleWriterTxDatabase, SingleWriterTxKeyspace,
};
use tokio::sync::{mpsc, oneshot};

use crate::{Key, Record, Result, StorageError, decode_record, encode_record};

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub path: PathBuf,
    pub cache_size_bytes: u64,
    pub max_journal_size_bytes: u64,
    /// Every table the application uses; each is one fjall keyspace.
    pub tables: Vec<&'static str>,
    /// Most commands applied in one transaction (one sync).
    pub max_batch: usize,
    /// Commands that may wait for the writer before `submit` applies back-pressure.
    pub queue_depth: usize,
    /// Told about every batch that wrote something (metrics); `None`: nobody.
    pub commit_observer: Option<CommitObserver>,
    /// The application's steps from one data format to the next. The format this
    /// build writes is the highest `to` (at least the storage layer's own
    /// [`FORMAT_VERSION`]); an older database is migrated at open, a newer one refused.
    pub migrations: Vec<Migration>,
}

/// One step of the data format, run once when the store opens a database of an
/// older format: in one transaction with the format bump, so a crash leaves either
/// the old format with the old data or the new format with the new data.
#[derive(Clone, Copy)]
pub struct Migration {
    /// The format this step produces; steps run in order of it.
    pub to: u32,
    /// What it changes, for the log.
    pub what: &'static str,
    pub run: fn(&mut WriteCtx<'_>) -> Result<()>,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Migration(to {}: {})", self.to, self.what)
    }
}

/// One committed (or failed) batch, as the writer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReport {
    /// Commands in the batch (group commit: one sync for all of them).
    pub commands: usize,
    /// From the start of the batch to the end of its commit, sync included.
    pub elapsed: Duration,
    pub ok: bool,
}

/// A callback for [`CommitReport`]s. It runs on the writer thread between batches,
/// so it must be cheap and must not block (record a metric, bump a counter).
/// Storage stays ignorant of any metrics library this way.
#[derive(Clone)]
pub struct CommitObserver(pub Arc<dyn Fn(CommitReport) + Send + Sync>);

impl std::fmt::Debug for CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

impl StoreOptions {
    pub fn new(path: impl Into<PathBuf>, tables: Vec<&'static str>) -> Self {
        StoreOptions {
            path: path.into(),
            cache_size_bytes: 64 << 20,
            max_journal_size_bytes: 128 << 20,
            tables,
            max_batch: 512,
            queue_depth: 8192,
            commit_observer: None,
            migrations: Vec::new(),
        }
    }

    /// The data format this build writes (and the newest it reads).
    pub fn format_version(&self) -> u32 {
        self.migrations
            .iter()
            .map(|m| m.to)
            .fold(FORMAT_VERSION, u32::max)
    }
}

/// The on-disk layout version of payd's storage (key encodings, table set, envelope)
/// before any application migration. A database written by a newer format is
/// refused at open instead of misread; an older one is migrated (see [`Migration`]).
pub(crate) const FORMAT_VERSION: u32 = 1;
const META_KEYSPACE: &str = "__payd_meta";

/// The format of the database, stamping a fresh one with `current`.
fn check_format(db: &SingleWriterTxDatabase, current: u32) -> Result<u32> {
    let meta = db.keyspace(META_KEYSPACE, KeyspaceCreateOptions::default)?;
    match meta.get("format")? {
        None => {
            meta.insert("format", current.to_be_bytes())?;
            db.persist(PersistMode::SyncAll)?;
            Ok(current)
        }
        Some(v) => {
            let found = <[u8; 4]>::try_from(&v[..])
                .map(u32::from_be_bytes)
                .map_err(|_| StorageError::Corrupt {
                    table: META_KEYSPACE,
                    reason: "format version is not 4 bytes".into(),
                })?;
            if found > current {
                return Err(StorageError::NewerFormat {
                    found,
                    supported: current,
                });
            }
            Ok(found)
        }
    }
}

/// Runs the migrations from `found` up to the current format, each in its own
/// transaction together with its format bump.
fn migrate(engine: &Engine, opts: &StoreOptions, found: u32) -> Result<()> {
    let mut steps: Vec<&Migration> = opts.migrations.iter().filter(|m| m.to > found).collect();
    steps.sort_by_key(|m| m.to);
    let meta = engine
        .db
        .keyspace(META_KEYSPACE, KeyspaceCreateOptions::default)?;
    for step in steps {
        let started = Instant::now();
        let mut tx = engine.db.write_tx().durability(Some(PersistMode::SyncAll));
        let staged = {
            let earlier = Overlay::default();
            let mut ctx = WriteCtx {
                engine,
                tx: &tx,
                earlier: &earlier,
                staged: Vec::new(),
                staged_index: HashMap::new(),
            };
            (step.run)(&mut ctx)?;
            ctx.staged
        };
        let writes = staged.len();
        for (table, key, value) in staged {
            let ks = engine.keyspace(table);
            match value {
                Some(v) => tx.insert(ks, key, v),
                None => tx.remove(ks, key),
            }
        }
        tx.insert(&meta, "format", step.to.to_be_bytes());
        tx.commit()?;
        tracing::warn!(
            to = step.to,
            what = step.what,
            writes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "storage migrated to a newer data format"
        );
    }
    Ok(())
}

/// A typed handle on one keyspace.
pub struct Table<K, V> {
    name: &'static str,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K: Key, V: Record> Table<K, V> {
    pub const fn new(name: &'static str) -> Self {
        Table {
            name,
            _types: PhantomData,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn decode_pair(&self, k: &[u8], v: &[u8]) -> Result<(K, V)> {
        let key = K::from_bytes(k).ok_or(StorageError::CorruptKey { table: self.name })?;
        Ok((key, decode_record(self.name, v)?))
    }
}

/// Each table's memtable is flushed once it holds this much (fjall's default is
/// 64 MiB per keyspace). Memtables are the bulk of a busy store's memory — a skip
/// list node per write, about twice the bytes it journals — and a dozen tables at
/// 64 MiB could each sit near full; at 16 MiB a million pending orders stay within
/// issue 9's 512 B each, and the journal they pin (replayed at start) is shorter.
const MAX_MEMTABLE_SIZE: u64 = 16 << 20;

struct Engine {
    db: SingleWriterTxDatabase,
    keyspaces: HashMap<&'static str, SingleWriterTxKeyspace>,
}

impl Engine {
    fn open(opts: &StoreOptions) -> Result<Engine> {
        let db = SingleWriterTxDatabase::builder(&opts.path)
            .cache_size(opts.cache_size_bytes)
            .max_journaling_size(opts.max_journal_size_bytes)
            .open()?;
        let found = check_format(&db, opts.format_version())?;
        let mut keyspaces = HashMap::new();
        for &name in &opts.tables {
            let options = || KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_SIZE);
            keyspaces.insert(name, db.keyspace(name, options)?);
        }
        sync_directories(&opts.path)?;
        let engine = Engine { db, keyspaces };
        migrate(&engine, opts, found)?;
        Ok(engine)
    }

    fn keyspace(&self, table: &'static str) -> &SingleWriterTxKeyspace {
        match self.keyspaces.get(table) {
            Some(k) => k,
            None => panic!("table {table} was not declared in StoreOptions::tables"),
        }
    }
}

/// Removes what a database creation cut short left behind, so that it can start over.
///
/// fjall 3.1 creates `lock`, `keyspaces/` and `0.jnl` (pre-allocated: 64 MiB of
/// zeros, synced, its name made durable), then its `version` marker (`FJL` and the
/// format byte), syncs the marker and only then the data directory. A power cut
/// before that last sync leaves the marker missing, empty or torn: fjall then
/// either creates the database again and fails on the journal already there
/// ("File exists"), or refuses the marker — forever (both found by the power-cut
/// test with cuts in the first start). Nothing can have been stored then (the
/// durable marker precedes every keyspace and every commit), so exactly those
/// leftovers — a marker shorter than its header, a journal holding only zeros, an
/// empty `keyspaces/`, the lock file — are removed; anything else is left as it is
/// (a mount point's `lost+found`, say), and a complete marker means no leftovers.
fn clear_interrupted_creation(path: &std::path::Path) -> Result<()> {
    const MARKER: &[u8] = b"FJL\x03";
    let err = |e: std::io::Error| StorageError::Engine(format!("{}: {e}", path.display()));
    match std::fs::read(path.join("version")) {
        Ok(m) if m.len() < MARKER.len() && MARKER.starts_with(&m) => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut leftovers = Vec::new();
    for entry in std::fs::read_dir(path).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let p = entry.path();
        let is_file = || std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file());
        let empty_dir = || std::fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none());
        let leftover = match name.to_str() {
            Some("lock" | "version") => is_file(),
            Some("0.jnl") => is_file() && only_zeros(&p).map_err(err)?,
            Some("keyspaces") => empty_dir(),
            _ => false,
        };
        if leftover {
            leftovers.push(p);
        }
    }
    for p in leftovers {
        tracing::warn!(path = %p.display(), "removing what an interrupted database creation left");
        if p.is_dir() {
            std::fs::remove_dir(&p).map_err(err)?;
        } else {
            std::fs::remove_file(&p).map_err(err)?;
        }
    }
    Ok(())
}

/// Whether a file holds nothing but zero bytes (or nothing at all).
fn only_zeros(p: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// Makes the directory entries fjall created durable before anything is committed.
///
/// fjall fsyncs a keyspace's own folder after filling it, but not the folder that
/// lists the keyspaces (`keyspaces/`) after creating one — and payd creates its data
/// directory itself. Until those entries reach the disk, a power cut can take whole
/// keyspace directories with it, and fjall then opens an empty database without
/// complaint: every acknowledged payment gone (the power-cut test found this on the
/// first start). So: fsync the data directory, each directory directly inside it,
/// and its parent. Once per open, a handful of fsyncs.
fn sync_directories(path: &std::path::Path) -> Result<()> {
    let sync = |dir: &std::path::Path| {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| StorageError::Engine(format!("fsync {}: {e}", dir.display())))
    };
    let entries = std::fs::read_dir(path)
        .map_err(|e| StorageError::Engine(format!("{}: {e}", path.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::Engine(e.to_string()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            sync(&entry.path())?;
        }
    }
    sync(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync(parent)?;
    }
    Ok(())
}

/// Counters the writer keeps, for metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    pub commits: u64,
    pub commands: u64,
    pub failed_commits: u64,
    pub reopens: u64,
    /// Time the writer spent running commands (their reads and staged writes).
    pub execute: Duration,
    /// Time it spent committing batches: journal write, fdatasync, memtables.
    pub commit: Duration,
    /// Time it held busy batches open for more commands ([`GROUP_WAIT`]).
    pub group_wait: Duration,
}

struct Shared {
    opts: StoreOptions,
    engine: RwLock<Option<Arc<Engine>>>,
    healthy: AtomicBool,
    closed: AtomicBool,
    commits: AtomicU64,
    commands: AtomicU64,
    failed_commits: AtomicU64,
    reopens: AtomicU64,
    /// Nanoseconds, see [`StoreStats`].
    execute_ns: AtomicU64,
    commit_ns: AtomicU64,
    group_wait_ns: AtomicU64,
    #[cfg(any(test, feature = "fault-injection"))]
    fail_commits: AtomicU64,
    /// Per [`FaultPoint`]: 0 = armed off; n = the n-th occurrence from now fails.
    #[cfg(any(test, feature = "fault-injection"))]
    fail_at: [AtomicU64; 3],
    #[cfg(any(test, feature = "fault-injection"))]
    hold_reopen: AtomicBool,
}

/// Where an injected storage fault strikes (builds with `fault-injection` only).
///
/// fjall offers no hook below its commit (its journal write and `fdatasync` happen
/// inside `commit()`), so the faults are injected at this layer's own boundaries,
/// which map one to one onto what fjall does for a batch: each staged write goes into
/// the transaction (→ the journal), the commit writes the batch, the sync makes it
/// durable.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Applying one staged key write to the transaction: the batch is abandoned and
    /// nothing of it reaches the journal (a `write(2)` that failed).
    Write = 0,
    /// A commit that fails before any of its batch reaches the journal.
    Commit = 1,
    /// A commit whose batch is written to the journal file (handed to the OS) but
    /// whose sync fails: the `fsync` that returned EIO. Whether the batch survives is
    /// then up to the disk; payd must not have acknowledged it.
    Sync = 2,
}

#[cfg(any(test, feature = "fault-injection"))]
impl Shared {
    /// True when this occurrence of `point` is the one armed to fail.
    fn trip(&self, point: FaultPoint) -> bool {
        let slot = &self.fail_at[point as usize];
        slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            (left > 0).then(|| left - 1)
        }) == Ok(1)
    }
}

impl Shared {
    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

type Finisher = Box<dyn FnOnce(Result<()>) + Send>;
/// A queued command. Called with `None` when it will not run (store closed or
/// poisoned): it then only hands back the finisher that answers its caller.
type Job = Box<dyn FnOnce(Option<&mut WriteCtx<'_>>) -> (bool, Finisher) + Send>;

enum Msg {
    Job(Job),
    Shutdown(oneshot::Sender<()>),
}

/// The handle the application holds. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
}

impl Store {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(opts: StoreOptions) -> Result<Store> {
        std::fs::create_dir_all(&opts.path).map_err(|e| StorageError::Engine(e.to_string()))?;
        clear_interrupted_creation(&opts.path)?;
        let engine = Engine::open(&opts)?;
        let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
        let shared = Arc::new(Shared {
            opts,
            engine: RwLock::new(Some(Arc::new(engine))),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            execute_ns: AtomicU64::new(0),
            commit_ns: AtomicU64::new(0),
            group_wait_ns: AtomicU64::new(0),
            #[cfg(any(test, feature = "fault-injection"))]
            fail_commits: AtomicU64::new(0),
            #[cfg(any(test, feature = "fault-injection"))]
            fail_at: Default::default(),
            #[cfg(any(test, feature = "fault-injection"))]
            hold_reopen: AtomicBool::new(false),
        });
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("payd-storage-writer".into())
            .spawn(move || writer_loop(writer_shared, rx))
            .map_err(|e| StorageError::Engine(e.to_string()))?;
        Ok(Store { shared, tx })
    }

    /// The data format this store writes (the database is migrated to it at open).
    pub fn format_version(&self) -> u32 {
        self.shared.opts.format_version()
    }

    /// False after a failed write until the database has been reopened.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> StoreStats {
        let s = &self.shared;
        StoreStats {
            commits: s.commits.load(Ordering::Relaxed),
            commands: s.commands.load(Ordering::Relaxed),
            failed_commits: s.failed_commits.load(Ordering::Relaxed),
            reopens: s.reopens.load(Ordering::Relaxed),
            execute: Duration::from_nanos(s.execute_ns.load(Ordering::Relaxed)),
            commit: Duration::from_nanos(s.commit_ns.load(Ordering::Relaxed)),
            group_wait: Duration::from_nanos(s.group_wait_ns.load(Ordering::Relaxed)),
        }
    }

    /// A consistent snapshot for reads. Reads keep working while writes are refused,
    /// except for the moment the database is being reopened.
    pub fn read(&self) -> Result<ReadView> {
        let engine = self.shared.engine().ok_or(StorageError::Closed)?;
        let snapshot = engine.db.read_tx();
        Ok(ReadView { engine, snapshot })
    }

    /// Applies `command` in the writer's transaction and answers once the batch that
    /// holds it is durable. The outer `Result` is the store's (unavailable, closed,
    /// command panicked); the inner one is the command's own verdict. A command that
    /// returns `Err` has its writes discarded.
    ///
    /// Not an `async fn`: the command is boxed into its job right away, so the future
    /// callers hold (and move while nesting awaits) is a few words, not the command
    /// with everything it captured — for a new order, several copies of the order.
    pub fn submit<T, E, F>(
        &self,
        command: F,
    ) -> impl Future<Output = Result<std::result::Result<T, E>>> + '_
    where
        F: FnOnce(&mut WriteCtx<'_>) -> std::result::Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let queued = if self.shared.closed.load(Ordering::Acquire) {
            Err(StorageError::Closed)
        } else if !self.is_healthy() {
            Err(StorageError::Unavailable)
        } else {
            let (reply_tx, reply_rx) = oneshot::channel();
            let job: Job = Box::new(move |ctx: Option<&mut WriteCtx<'_>>| {
                let outcome = ctx.map(|ctx| catch_unwind(AssertUnwindSafe(|| command(ctx))));
                let keep = matches!(outcome, Some(Ok(Ok(_))));
                let finish: Finisher = Box::new(move |committed: Result<()>| {
                    let answer = match (committed, outcome) {
                        (Err(e), _) => Err(e),
                        (Ok(()), Some(Ok(verdict))) => Ok(verdict),
                        (Ok(()), Some(Err(_))) => Err(StorageError::CommandPanicked),
                        (Ok(()), None) => Err(StorageError::Unavailable),
                    };
                    let _ = reply_tx.send(answer);
                });
                (keep, finish)
            });
            Ok((job, reply_rx))
        };
        async move {
            let (job, reply_rx) = queued?;
            self.tx
                .send(Msg::Job(job))
                .await
                .map_err(|_| StorageError::Closed)?;
            reply_rx.await.map_err(|_| StorageError::Closed)?
        }
    }

    /// Stops the writer after the commands already queued, and closes the database.
    pub async fn shutdown(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
    }

    /// Makes the next `n` commits fail as if the disk had refused them.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fail_next_commits(&self, n: u64) {
        self.shared.fail_commits.store(n, Ordering::SeqCst);
    }

    /// Makes the `n`-th occurrence of `point` from now fail (`n` = 1: the next one;
    /// 0 disarms it). One armed fault per point at a time.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn fail_at(&self, point: FaultPoint, n: u64) {
        self.shared.fail_at[point as usize].store(n, Ordering::SeqCst);
    }

    /// While `true`, a reopen after a failed commit keeps failing (a disk that stays
    /// broken), so tests can watch payd refuse writes.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn hold_reopen(&self, hold: bool) {
        self.shared.hold_reopen.store(hold, Ordering::SeqCst);
    }
}

/// One staged write: table, key, and the new value (`None` deletes).
type StagedWrite = (&'static str, Vec<u8>, Option<Vec<u8>>);

/// Staged writes a command can hold before lookups use an index.
const STAGED_SCAN: usize = 16;

/// What the commands before this one in the batch wrote, by table and key (`None`:
/// deleted), not yet committed. The batch commits it as one fjall write batch:
/// inserting each write into the transaction instead (its own skip list, copied
/// into a batch again at commit) cost about 17 000 instructions per created order.
#[derive(Default)]
struct Overlay {
    tables: HashMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl Overlay {
    fn get(&self, table: &'static str, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.tables.get(table)?.get(key)
    }

    fn table(&self, table: &'static str) -> Option<&BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
        self.tables.get(table).filter(|t| !t.is_empty())
    }

    fn absorb(&mut self, staged: Vec<StagedWrite>) {
        for (table, key, value) in staged {
            self.tables.entry(table).or_default().insert(key, value);
        }
    }

    fn is_empty(&self) -> bool {
        self.tables.values().all(BTreeMap::is_empty)
    }
}

/// What a command sees: reads of the committed state through the writer's
/// transaction, overlaid with the writes of the commands before it in the batch;
/// its own writes are staged until it returns Ok.
pub struct WriteCtx<'a> {
    engine: &'a Engine,
    tx: &'a fjall::SingleWriterWriteTx<'a>,
    earlier: &'a Overlay,
    staged: Vec<StagedWrite>,
    staged_index: HashMap<(&'static str, Vec<u8>), usize>,
}

impl WriteCtx<'_> {
    pub fn get<K: Key, V: Record>(&self, table: &Table<K, V>, key: &K) -> Result<Option<V>> {
        let k = key.to_bytes();
        let mine = self.staged_at(table.name, &k).map(|i| &self.staged[i].2);
        if let Some(value) = mine.or_else(|| self.earlier.get(table.name, &k)) {
            return match value {
                Some(bytes) => Ok(Some(decode_record(table.name, bytes)?)),
                None => Ok(None),
            };
        }
        match self.tx.get(self.engine.keyspace(table.name), &k)? {
            Some(bytes) => Ok(Some(decode_record(table.name, &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn put<K: Key, V: Record>(&mut self, table: &Table<K, V>, key: &K, value: &V) {
        self.stage(table.name, key.to_bytes(), Some(encode_record(value)));
    }

    pub fn delete<K: Key, V: Record>(&mut self, table: &Table<K, V>, key: &K) {
        self.stage(table.name, key.to_bytes(), None);
    }

    /// Writes an entry exactly as [`ReadView::raw_entries`] returned it, with no
    /// envelope added: for restoring an export into a fresh database.
    pub fn put_raw(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.stage(table, key, Some(value));
    }

    /// Keys and values whose key starts with the encoding of `prefix`, in key order.
    /// Writes staged by the running command are not visible here.
    pub fn scan_prefix<K: Key, V: Record, P: Key>(
        &self,
        table: &Table<K, V>,
        prefix: &P,
        limit: usize,
    ) -> Result<Vec<(K, V)>> {
        let prefix = prefix.to_bytes();
        let iter = self
            .tx
            .prefix(self.engine.keyspace(table.name), prefix.clone());
        match self.earlier.table(table.name) {
            None => collect(table, iter, limit),
            Some(earlier) => merged(iter, earlier, &prefix, limit)?
                .into_iter()
                .map(|(k, v)| table.decode_pair(&k, &v))
                .collect(),
        }
    }

    /// Every raw key and value of a table as the transaction sees it (staged writes of
    /// the running command excluded): for migrations, which must read records of an
    /// older schema that the typed reads refuse.
    pub fn raw_entries(&self, table: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let iter = self
            .tx
            .prefix(self.engine.keyspace(table), Vec::<u8>::new());
        merged(
            iter,
            self.earlier.table(table).unwrap_or(&BTreeMap::new()),
            &[],
            usize::MAX,
        )
    }

    /// Where the command staged a write to this key, if it did. Most commands stage
    /// a handful of writes, which a scan finds faster than hashing the key; past
    /// [`STAGED_SCAN`] writes (restores, pruning batches) an index takes over.
    fn staged_at(&self, table: &'static str, key: &[u8]) -> Option<usize> {
        if self.staged.len() <= STAGED_SCAN {
            return self
                .staged
                .iter()
                .position(|(t, k, _)| *t == table && k.as_slice() == key);
        }
        self.staged_index.get(&(table, key.to_vec())).copied()
    }

    fn stage(&mut self, table: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) {
        if let Some(i) = self.staged_at(table, &key) {
            self.staged[i].2 = value;
            return;
        }
        if self.staged.len() == STAGED_SCAN {
            // From now on the index is kept: fill it with what was staged so far.
            for (i, (t, k, _)) in self.staged.iter().enumerate() {
                self.staged_index.insert((*t, k.clone()), i);
            }
        }
        if self.staged.len() >= STAGED_SCAN {
            self.staged_index
                .insert((table, key.clone()), self.staged.len());
        }
        self.staged.push((table, key, value));
    }
}

/// Up to `limit` entries whose key starts with `prefix`, in key order: those of
/// `committed` with `earlier`'s writes laid over them (a write replaces the entry of
/// its key; a deletion hides it).
fn merged(
    mut committed: impl Iterator<Item = fjall::Guard>,
    earlier: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut laid = earlier
        .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .peekable();
    let mut next_committed = next_entry(&mut committed)?;
    let mut out = Vec::new();
    while out.len() < limit {
        let take_laid = match (laid.peek(), &next_committed) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((k, _)), Some((ck, _))) => k.as_slice() <= ck.as_slice(),
        };
        if take_laid {
            let Some((k, value)) = laid.next() else {
                break;
            };
            if next_committed.as_ref().is_some_and(|(ck, _)| ck == k) {
                // Replaced or deleted by an earlier command of the batch.
                next_committed = next_entry(&mut committed)?;
            }
            if let Some(v) = value {
                out.push((k.clone(), v.clone()));
            }
        } else if let Some(entry) = next_committed.take() {
            out.push(entry);
            next_committed = next_entry(&mut committed)?;
        }
    }
    Ok(out)
}

fn next_entry(
    entries: &mut impl Iterator<Item = fjall::Guard>,
) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    match entries.next() {
        Some(guard) => {
            let (k, v) = guard.into_inner()?;
            Ok(Some((k.to_vec(), v.to_vec())))
        }
        None => Ok(None),
    }
}

fn collect<K: Key, V: Record>(
    table: &Table<K, V>,
    iter: impl Iterator<Item = fjall::Guard>,
    limit: usize,
) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for guard in iter.take(limit) {
        let (k, v) = guard.into_inner()?;
        out.push(table.decode_pair(&k, &v)?);
    }
    Ok(out)
}

/// A read snapshot.
pub struct ReadView {
    engine: Arc<Engine>,
    snapshot: fjall::Snapshot,
}

impl ReadView {
    pub fn get<K: Key, V: Record>(&self, table: &Table<K, V>, key: &K) -> Result<Option<V>> {
        match self
            .snapshot
            .get(self.engine.keyspace(table.name), key.to_bytes())?
        {
            Some(bytes) => Ok(Some(decode_record(table.name, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order (or reverse).
    pub fn scan_prefix<K: Key, V: Record, P: Key>(
        &self,
        table: &Table<K, V>,
        prefix: &P,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(K, V)>> {
        let iter = self
            .snapshot
            .prefix(self.engine.keyspace(table.name), prefix.to_bytes());
        if reverse {
            collect(table, iter.rev(), limit)
        } else {
            collect(table, iter, limit)
        }
    }

    /// Up to `limit` entries with `from` ≤ key < `end`, in key order; `from: None`
    /// starts at the table's first key. Starting past keys known to be deleted saves
    /// stepping over their tombstones, which stay in the memtable until it is flushed.
    pub fn scan_until<K: Key, V: Record>(
        &self,
        table: &Table<K, V>,
        from: Option<&[u8]>,
        end_exclusive: &[u8],
        limit: usize,
    ) -> Result<Vec<(K, V)>> {
        let start = from.map_or(Bound::Unbounded, Bound::Included);
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (start, Bound::Excluded(end_exclusive));
        let iter = self
            .snapshot
            .range::<&[u8], _>(self.engine.keyspace(table.name), range);
        collect(table, iter, limit)
    }

    /// Number of entries whose key starts with `prefix` (walks them).
    pub fn count_prefix<K: Key, V: Record, P: Key>(
        &self,
        table: &Table<K, V>,
        prefix: &P,
    ) -> usize {
        self.snapshot
            .prefix(self.engine.keyspace(table.name), prefix.to_bytes())
            .count()
    }

    /// Every raw key and value of a table, in key order: for consistent exports and
    /// for tests that prove a request changed nothing.
    pub fn raw_entries(&self, table: &'static str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for guard in self.snapshot.iter(self.engine.keyspace(table)) {
            let (k, v) = guard.into_inner()?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The first entry of a table, in key order.
    pub fn first<K: Key, V: Record>(&self, table: &Table<K, V>) -> Result<Option<(K, V)>> {
        match self
            .snapshot
            .first_key_value(self.engine.keyspace(table.name))
        {
            Some(guard) => {
                let (k, v) = guard.into_inner()?;
                Ok(Some(table.decode_pair(&k, &v)?))
            }
            None => Ok(None),
        }
    }
}

/// A batch at least this large means commands are arriving concurrently: the next
/// batch waits [`GROUP_WAIT`] for more before it commits.
const BUSY_BATCH: usize = 8;
/// How long a busy writer holds a batch open. Under load each fsync then carries
/// two to three times the commands for at most this much more latency; an idle or
/// lightly used store (one command at a time) never waits.
const GROUP_WAIT: Duration = Duration::from_micros(250);

fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>) {
    let mut pending: Option<Msg> = None;
    let mut busy = false;
    loop {
        let first = match pending.take().or_else(|| rx.blocking_recv()) {
            Some(m) => m,
            None => break,
        };
        let mut batch = Vec::new();
        let mut shutdown = None;
        match first {
            Msg::Job(j) => batch.push(j),
            Msg::Shutdown(done) => shutdown = Some(done),
        }
        let mut drain = |batch: &mut Vec<Job>, shutdown: &mut Option<_>| {
            while shutdown.is_none() && batch.len() < shared.opts.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Job(j)) => batch.push(j),
                    Ok(Msg::Shutdown(done)) => *shutdown = Some(done),
                    Err(_) => break,
                }
            }
        };
        drain(&mut batch, &mut shutdown);
        if busy && shutdown.is_none() && batch.len() < shared.opts.max_batch {
            let t0 = Instant::now();
            std::thread::sleep(GROUP_WAIT);
            add_elapsed(&shared.group_wait_ns, t0);
            drain(&mut batch, &mut shutdown);
        }
        busy = batch.len() >= BUSY_BATCH;
        if !batch.is_empty() {
            run_batch(&shared, batch);
        }
        if let Some(done) = shutdown {
            *shared.engine.write().unwrap_or_else(|p| p.into_inner()) = None;
            shared.closed.store(true, Ordering::Release);
            let _ = done.send(());
            // Refuse whatever arrives afterwards.
            rx.close();
            while let Some(msg) = rx.blocking_recv() {
                if let Msg::Job(job) = msg {
                    refuse(job, StorageError::Closed);
                }
            }
            return;
        }
        if !shared.healthy.load(Ordering::Acquire) {
            reopen(&shared, &mut rx, &mut pending);
        }
    }
}

fn add_elapsed(total_ns: &AtomicU64, since: Instant) {
    let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
    total_ns.fetch_add(ns, Ordering::Relaxed);
}

/// A job that will not run still answers its caller, with `error`.
fn refuse(job: Job, error: StorageError) {
    let (_, finish) = job(None);
    finish(Err(error));
}

fn run_batch(shared: &Shared, batch: Vec<Job>) {
    let Some(engine) = shared.engine() else {
        batch
            .into_iter()
            .for_each(|j| refuse(j, StorageError::Closed));
        return;
    };
    if !shared.healthy.load(Ordering::Acquire) {
        batch
            .into_iter()
            .for_each(|j| refuse(j, StorageError::Unavailable));
        return;
    }
    let started = Instant::now();
    // The transaction is only read through (the committed state, and it keeps other
    // writers out); the batch's writes gather in `earlier` and commit as one write
    // batch.
    let tx = engine.db.write_tx();
    let mut earlier = Overlay::default();
    let mut finishers = Vec::with_capacity(batch.len());
    #[cfg(any(test, feature = "fault-injection"))]
    let mut write_failed = false;
    let count = batch.len() as u64;
    for job in batch {
        let (keep, staged) = {
            let mut ctx = WriteCtx {
                engine: &engine,
                tx: &tx,
                earlier: &earlier,
                staged: Vec::new(),
                staged_index: HashMap::new(),
            };
            let (keep, finish) = job(Some(&mut ctx));
            finishers.push(finish);
            (keep, ctx.staged)
        };
        if keep {
            #[cfg(any(test, feature = "fault-injection"))]
            for _ in &staged {
                if write_failed || shared.trip(FaultPoint::Write) {
                    write_failed = true;
                }
            }
            earlier.absorb(staged);
        }
    }
    let wrote = !earlier.is_empty();
    add_elapsed(&shared.execute_ns, started);
    #[cfg(any(test, feature = "fault-injection"))]
    if write_failed {
        drop(tx);
        let failed = Err(StorageError::Engine("injected write failure".into()));
        return finish_batch(shared, started, count, finishers, true, failed);
    }
    let committed = if wrote {
        let mut writes = engine
            .db
            .inner()
            .batch()
            .durability(Some(PersistMode::SyncData));
        for (table, entries) in earlier.tables {
            let ks = engine.keyspace(table).inner();
            for (key, value) in entries {
                match value {
                    Some(v) => writes.insert(ks, key, v),
                    None => writes.remove(ks, key),
                }
            }
        }
        let t0 = Instant::now();
        let committed = commit(shared, writes);
        drop(tx);
        add_elapsed(&shared.commit_ns, t0);
        committed
    } else {
        Ok(())
    };
    finish_batch(shared, started, count, finishers, wrote, committed);
}

fn finish_batch(
    shared: &Shared,
    started: Instant,
    count: u64,
    finishers: Vec<Finisher>,
    wrote: bool,
    committed: Result<()>,
) {
    shared.commands.fetch_add(count, Ordering::Relaxed);
    if wrote && let Some(observer) = &shared.opts.commit_observer {
        (observer.0)(CommitReport {
            commands: count as usize,
            elapsed: started.elapsed(),
            ok: committed.is_ok(),
        });
    }
    match committed {
        Ok(()) => {
            if wrote {
                shared.commits.fetch_add(1, Ordering::Relaxed);
            }
            tracing::trace!(
                commands = count,
                elapsed_us = started.elapsed().as_micros() as u64,
                "batch committed"
            );
            finishers.into_iter().for_each(|f| f(Ok(())));
        }
        Err(e) => {
            shared.failed_commits.fetch_add(1, Ordering::Relaxed);
            shared.healthy.store(false, Ordering::Release);
            tracing::error!(error = %e, commands = count, "storage commit failed; refusing writes until the database is reopened");
            finishers
                .into_iter()
                .for_each(|f| f(Err(StorageError::Unavailable)));
        }
    }
}

fn commit(shared: &Shared, tx: fjall::OwnedWriteBatch) -> Result<()> {
    #[cfg(any(test, feature = "fault-injection"))]
    {
        let left = shared.fail_commits.load(Ordering::SeqCst);
        if left > 0 {
            shared.fail_commits.store(left - 1, Ordering::SeqCst);
            drop(tx);
            return Err(StorageError::Engine("injected commit failure".into()));
        }
        if shared.trip(FaultPoint::Commit) {
            drop(tx);
            return Err(StorageError::Engine("injected commit failure".into()));
        }
        if shared.trip(FaultPoint::Sync) {
            // The batch reaches the journal file, but its sync "fails".
            tx.durability(Some(PersistMode::Buffer)).commit()?;
            return Err(StorageError::Engine("injected sync failure".into()));
        }
    }
    let _ = shared;
    tx.commit().map_err(StorageError::from)
}

/// Waits until the disk accepts writes again (keeping the old engine, so reads go on
/// being served meanwhile), then drops the poisoned engine and opens the database
/// again, which replays the journal and discards a torn tail. Commands arriving
/// meanwhile are refused.
fn reopen(shared: &Shared, rx: &mut mpsc::Receiver<Msg>, pending: &mut Option<Msg>) {
    let mut delay = Duration::from_millis(50);
    loop {
        #[cfg(any(test, feature = "fault-injection"))]
        let held = shared.hold_reopen.load(Ordering::SeqCst);
        #[cfg(not(any(test, feature = "fault-injection")))]
        let held = false;
        let probed = if held {
            Err(StorageError::Engine(
                "the disk is held broken by a test".into(),
            ))
        } else {
            probe_disk(&shared.opts.path)
        };
        let opened = probed.and_then(|()| {
            // fjall holds a lock on the directory: the old engine must go first. Reads
            // fail only for the moment of the reopen itself.
            *shared.engine.write().unwrap_or_else(|p| p.into_inner()) = None;
            Engine::open(&shared.opts)
        });
        match opened {
            Ok(engine) => {
                *shared.engine.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(engine));
                shared.reopens.fetch_add(1, Ordering::Relaxed);
                shared.healthy.store(true, Ordering::Release);
                tracing::warn!("storage reopened after a failed write; accepting writes again");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "storage reopen failed; retrying, reads still served");
            }
        }
        // Answer what queued up while we wait, so no caller hangs.
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => refuse(job, StorageError::Unavailable),
                Ok(shutdown @ Msg::Shutdown(_)) => {
                    *pending = Some(shutdown);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// Whether the disk under `dir` takes a write and a sync again: a 4 KiB file written,
/// synced and removed. Until it does, reopening would only fail (or succeed and fail
/// at the next commit), and dropping the old engine would stop reads for nothing.
fn probe_disk(dir: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let path = dir.join(".payd-write-probe");
    let attempt = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_data()
    })();
    let _ = std::fs::remove_file(&path);
    attempt.map_err(|e| StorageError::Engine(format!("the disk refuses writes: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Balance(i64);
    impl Record for Balance {
        const SCHEMA: u8 = 1;
    }
    const BALANCES: Table<String, Balance> = Table::new("balances");
    const LOG: Table<(String, u64), Balance> = Table::new("log");

    fn open(dir: &std::path::Path) -> Store {
        Store::open(StoreOptions::new(dir, vec!["balances", "log"])).unwrap()
    }

    async fn add(
        store: &Store,
        user: &str,
        delta: i64,
    ) -> Result<std::result::Result<i64, String>> {
        let user = user.to_string();
        store
            .submit(move |ctx| {
                let cur = ctx.get(&BALANCES, &user)?.map_or(0, |b: Balance| b.0);
                let next = cur + delta;
                if next < 0 {
                    return Ok(Err("insufficient".to_string()));
                }
                ctx.put(&BALANCES, &user, &Balance(next));
                let seq = ctx.scan_prefix(&LOG, &user, usize::MAX)?.len() as u64;
                ctx.put(&LOG, &(user.clone(), seq), &Balance(delta));
                Ok::<_, StorageError>(Ok(next))
            })
            .await
            .and_then(|r| r)
    }

    /// Adds 1 to a balance and logs it under the old balance: in a consistent store
    /// the balance equals the number of log entries.
    async fn add_one(store: &Store, user: &str) -> Result<std::result::Result<i64, String>> {
        let user = user.to_string();
        store
            .submit(move |ctx| {
                let cur = ctx.get(&BALANCES, &user)?.map_or(0, |b: Balance| b.0);
                ctx.put(&BALANCES, &user, &Balance(cur + 1));
                ctx.put(&LOG, &(user.clone(), cur as u64), &Balance(1));
                Ok::<_, StorageError>(Ok(cur + 1))
            })
            .await
            .and_then(|r| r)
    }

    #[tokio::test]
    async fn a_scan_sees_the_earlier_commands_of_its_batch_laid_over_the_committed_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for (user, seq) in [("a", 0u64), ("b", 0), ("b", 2), ("b", 4), ("c", 0)] {
            store
                .submit(move |ctx| {
                    ctx.put(&LOG, &(user.to_string(), seq), &Balance(seq as i64));
                    Ok::<_, StorageError>(())
                })
                .await
                .unwrap()
                .unwrap();
        }
        let engine = store.shared.engine().unwrap();
        let tx = engine.db.write_tx();
        let key = |user: &str, seq: u64| (user.to_string(), seq).to_bytes();
        let mut earlier = Overlay::default();
        earlier.absorb(vec![
            ("log", key("b", 1), Some(encode_record(&Balance(11)))),
            ("log", key("b", 2), None),
            ("log", key("b", 4), Some(encode_record(&Balance(44)))),
            ("log", key("b", 5), Some(encode_record(&Balance(55)))),
            ("log", key("c", 1), Some(encode_record(&Balance(-1)))),
            (
                "balances",
                "b".to_string().to_bytes(),
                Some(encode_record(&Balance(9))),
            ),
        ]);
        let ctx = WriteCtx {
            engine: &engine,
            tx: &tx,
            earlier: &earlier,
            staged: Vec::new(),
            staged_index: HashMap::new(),
        };
        let scan = |limit| {
            ctx.scan_prefix(&LOG, &"b".to_string(), limit)
                .unwrap()
                .into_iter()
                .map(|((_, seq), Balance(v))| (seq, v))
                .collect::<Vec<_>>()
        };
        assert_eq!(scan(usize::MAX), [(0, 0), (1, 11), (4, 44), (5, 55)]);
        assert_eq!(scan(2), [(0, 0), (1, 11)]);
        assert_eq!(ctx.get(&LOG, &("b".to_string(), 2)).unwrap(), None);
        assert_eq!(
            ctx.get(&BALANCES, &"b".to_string()).unwrap(),
            Some(Balance(9))
        );
        let all = ctx.raw_entries("log").unwrap();
        assert_eq!(all.len(), 7, "a0 b0 b1 b4 b5 c0 c1");
        assert_eq!(all[6], (key("c", 1), encode_record(&Balance(-1))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commands_never_read_stale_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move { add(&s, "u", 1).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap().unwrap();
        }
        let view = store.read().unwrap();
        assert_eq!(
            view.get(&BALANCES, &"u".to_string()).unwrap(),
            Some(Balance(200))
        );
        assert_eq!(view.count_prefix(&LOG, &"u".to_string()), 200);
        let stats = store.stats();
        assert!(stats.commits <= 200 && stats.commands == 200);
    }

    #[tokio::test]
    async fn a_command_reads_its_own_writes_before_and_after_it_stages_many() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // 40 keys written, rewritten and some deleted in one command: past the
        // point where staged writes get an index, every read sees the last write.
        let seen = store
            .submit(|ctx| {
                let mut seen = Vec::new();
                for round in 0..3i64 {
                    for i in 0..40i64 {
                        let key = format!("k{i}");
                        if round == 2 && i % 3 == 0 {
                            ctx.delete(&BALANCES, &key);
                        } else {
                            ctx.put(&BALANCES, &key, &Balance(round * 100 + i));
                        }
                        seen.push(ctx.get(&BALANCES, &key)?.map(|b: Balance| b.0));
                    }
                }
                Ok::<_, StorageError>(seen)
            })
            .await
            .unwrap()
            .unwrap();
        let expected: Vec<Option<i64>> = (0..3i64)
            .flat_map(|round| {
                (0..40i64).map(move |i| (round != 2 || i % 3 != 0).then_some(round * 100 + i))
            })
            .collect();
        assert_eq!(seen, expected);
        let view = store.read().unwrap();
        for i in 0..40i64 {
            let stored = view.get(&BALANCES, &format!("k{i}")).unwrap();
            assert_eq!(stored.map(|b| b.0), (i % 3 != 0).then_some(200 + i), "k{i}");
        }
    }

    #[tokio::test]
    async fn a_failing_command_fails_alone_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        add(&store, "a", 5).await.unwrap().unwrap();
        assert_eq!(
            add(&store, "a", -6).await.unwrap(),
            Err("insufficient".into())
        );
        let panicked = store
            .submit(|ctx| -> std::result::Result<(), ()> {
                ctx.put(&BALANCES, &"a".to_string(), &Balance(1000));
                panic!("bug in a command")
            })
            .await;
        assert!(matches!(panicked, Err(StorageError::CommandPanicked)));
        assert_eq!(add(&store, "a", -5).await.unwrap(), Ok(0));
    }

    #[tokio::test]
    async fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            add(&store, "x", 42).await.unwrap().unwrap();
            store.shutdown().await;
            assert!(matches!(
                add(&store, "x", 1).await,
                Err(StorageError::Closed)
            ));
        }
        let store = open(dir.path());
        let view = store.read().unwrap();
        assert_eq!(
            view.get(&BALANCES, &"x".to_string()).unwrap(),
            Some(Balance(42))
        );
    }

    #[tokio::test]
    async fn failed_commit_refuses_writes_until_reopened_and_loses_nothing_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        add(&store, "a", 10).await.unwrap().unwrap();
        store.fail_next_commits(1);
        assert!(matches!(
            add(&store, "a", 1).await,
            Err(StorageError::Unavailable)
        ));
        let mut healthy = false;
        for _ in 0..200 {
            if store.is_healthy() {
                healthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(healthy, "store did not reopen");
        assert_eq!(store.stats().reopens, 1);
        // Only acknowledged state is there after the reopen.
        let view = store.read().unwrap();
        assert_eq!(
            view.get(&BALANCES, &"a".to_string()).unwrap(),
            Some(Balance(10))
        );
        drop(view);
        assert_eq!(add(&store, "a", 1).await.unwrap(), Ok(11));
    }

    #[tokio::test]
    async fn a_database_of_a_newer_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).shutdown().await;
        {
            let db = SingleWriterTxDatabase::builder(dir.path()).open().unwrap();
            let meta = db
                .keyspace(META_KEYSPACE, KeyspaceCreateOptions::default)
                .unwrap();
            meta.insert("format", (FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let err = Store::open(StoreOptions::new(dir.path(), vec!["balances", "log"]))
            .err()
            .expect("refused");
        assert!(matches!(
            err,
            StorageError::NewerFormat {
                found: 2,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("newer"), "{err}");
    }

    /// Item 9 at the storage layer: for each fault point and n = 1..50, the n-th write
    /// / commit / sync from now fails while 8 writers add to balances. Every `Ok` is an
    /// acknowledgement. After the reopen: every acknowledged add is there, the log and
    /// the balance agree (no half-applied command), and an unacknowledged add is either
    /// wholly there or wholly absent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_nth_write_commit_or_sync_failing_loses_nothing_acknowledged() {
        // The faults are injected above the disk, so its speed does not matter here:
        // on tmpfs (where there is one) 1 275 syncs per fault point cost nothing.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        let store = open(dir.path());
        let mut acked: HashMap<String, i64> = HashMap::new();
        let mut faults = 0;
        for point in [FaultPoint::Write, FaultPoint::Commit, FaultPoint::Sync] {
            for n in 1..=50u64 {
                store.fail_at(point, n);
                let mut refused = false;
                let mut round = 0;
                while !refused {
                    let mut tasks = Vec::new();
                    for w in 0..8 {
                        let s = store.clone();
                        let user = format!("u{w}");
                        tasks.push(tokio::spawn(async move {
                            (user.clone(), add_one(&s, &user).await)
                        }));
                    }
                    for t in tasks {
                        match t.await.unwrap() {
                            (user, Ok(Ok(_))) => *acked.entry(user).or_default() += 1,
                            (_, Err(StorageError::Unavailable)) => refused = true,
                            (_, other) => panic!("{point:?} n={n}: {other:?}"),
                        }
                    }
                    round += 1;
                    assert!(round < 200, "{point:?} n={n}: the fault never struck");
                }
                faults += 1;
                let mut waited = 0;
                while !store.is_healthy() {
                    waited += 1;
                    assert!(waited < 500, "{point:?} n={n}: never reopened");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let view = store.read().unwrap();
                for w in 0..8 {
                    let user = format!("u{w}");
                    let balance = view.get(&BALANCES, &user).unwrap().map_or(0, |b| b.0);
                    let logged = view.count_prefix(&LOG, &user) as i64;
                    assert_eq!(
                        balance, logged,
                        "{point:?} n={n}: half-applied command for {user}"
                    );
                    let ack = acked.get(&user).copied().unwrap_or(0);
                    assert!(
                        balance >= ack,
                        "{point:?} n={n}: {user} lost acknowledged adds ({balance} < {ack})"
                    );
                    // Only an unacknowledged batch may have survived (a failed sync).
                    if point != FaultPoint::Sync {
                        assert_eq!(
                            balance, ack,
                            "{point:?} n={n}: {user} has unacknowledged adds"
                        );
                    }
                    // The store's state is the truth from here on.
                    acked.insert(user, balance);
                }
            }
        }
        assert_eq!(faults, 150);
        assert_eq!(store.stats().reopens, 150);
        store.shutdown().await;
        let store = open(dir.path());
        let view = store.read().unwrap();
        for (user, ack) in &acked {
            assert_eq!(view.get(&BALANCES, user).unwrap(), Some(Balance(*ack)));
        }
    }

    fn double_balances(ctx: &mut WriteCtx<'_>) -> Result<()> {
        for (k, v) in ctx.raw_entries("balances")? {
            let b: Balance = decode_record("balances", &v)?;
            ctx.put_raw("balances", k, encode_record(&Balance(b.0 * 2)));
        }
        Ok(())
    }

    fn broken_migration(ctx: &mut WriteCtx<'_>) -> Result<()> {
        double_balances(ctx)?;
        Err(StorageError::Engine("migration failed half way".into()))
    }

    fn with_migration(
        dir: &std::path::Path,
        run: fn(&mut WriteCtx<'_>) -> Result<()>,
    ) -> StoreOptions {
        let mut opts = StoreOptions::new(dir, vec!["balances", "log"]);
        opts.migrations.push(Migration {
            to: 2,
            what: "double balances",
            run,
        });
        opts
    }

    #[tokio::test]
    async fn an_older_format_is_migrated_once_and_a_failed_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        add(&store, "a", 21).await.unwrap().unwrap();
        store.shutdown().await;
        drop(store);
        // A migration that fails: refused at open, format and data as they were.
        let err = Store::open(with_migration(dir.path(), broken_migration))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("half way"), "{err}");
        let store = open(dir.path());
        let view = store.read().unwrap();
        assert_eq!(
            view.get(&BALANCES, &"a".to_string()).unwrap(),
            Some(Balance(21))
        );
        drop(view);
        store.shutdown().await;
        drop(store);
        // The real one: applied once, then the database is format 2.
        for _ in 0..2 {
            let store = Store::open(with_migration(dir.path(), double_balances)).unwrap();
            let view = store.read().unwrap();
            assert_eq!(
                view.get(&BALANCES, &"a".to_string()).unwrap(),
                Some(Balance(42))
            );
            drop(view);
            store.shutdown().await;
        }
        // A build without the migration no longer opens it.
        assert!(matches!(
            Store::open(StoreOptions::new(dir.path(), vec!["balances", "log"])).err(),
            Some(StorageError::NewerFormat {
                found: 2,
                supported: 1
            })
        ));
    }

    /// Regression: while the disk stayed broken (every reopen failing), the writer had
    /// already dropped the engine, so every read failed too (`Closed`).
    #[tokio::test]
    async fn reads_are_served_while_a_reopen_keeps_failing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        add(&store, "a", 7).await.unwrap().unwrap();
        store.hold_reopen(true);
        store.fail_next_commits(1);
        assert!(matches!(
            add(&store, "a", 1).await,
            Err(StorageError::Unavailable)
        ));
        // Several failed reopen attempts later, reads still answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!store.is_healthy());
        let view = store.read().expect("reads served on a broken disk");
        assert_eq!(
            view.get(&BALANCES, &"a".to_string()).unwrap(),
            Some(Balance(7))
        );
        drop(view);
        store.hold_reopen(false);
        for _ in 0..200 {
            if store.is_healthy() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(add(&store, "a", 1).await.unwrap(), Ok(8));
    }

    #[tokio::test]
    async fn a_database_creation_cut_short_by_a_power_cut_starts_over() {
        // What a power cut during fjall's first creation can leave: its first files
        // without the version marker written last.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lock"), b"").unwrap();
        std::fs::write(dir.path().join("0.jnl"), b"").unwrap();
        std::fs::create_dir(dir.path().join("keyspaces")).unwrap();
        let store = open(dir.path());
        store.shutdown().await;
        assert!(dir.path().join("version").exists());
        // Anything else is left alone.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir(other.path().join("lost+found")).unwrap();
        open(other.path()).shutdown().await;
        assert!(other.path().join("lost+found").is_dir());
    }

    #[tokio::test]
    async fn a_first_start_cut_after_the_journal_was_preallocated_starts_over() {
        // A cut after fjall's journal was pre-allocated and made durable (64 MiB of
        // zeros) but before the version marker's name was: once missing, once empty
        // and once torn. Each used to fail every start ("File exists", or the
        // marker refused).
        for marker in [None, Some(&b""[..]), Some(&b"FJ"[..])] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("lock"), b"").unwrap();
            std::fs::File::create(dir.path().join("0.jnl"))
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            std::fs::create_dir(dir.path().join("keyspaces")).unwrap();
            if let Some(m) = marker {
                std::fs::write(dir.path().join("version"), m).unwrap();
            }
            let store = open(dir.path());
            assert_eq!(add(&store, "a", 5).await.unwrap(), Ok(5));
            store.shutdown().await;
            let store = open(dir.path());
            assert_eq!(add(&store, "a", 1).await.unwrap(), Ok(6), "{marker:?}");
            store.shutdown().await;
        }
        // A journal holding anything but zeros is not a leftover: never removed.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0.jnl"), [0, 0, 7]).unwrap();
        assert!(Store::open(StoreOptions::new(dir.path(), vec!["balances"])).is_err());
        assert_eq!(std::fs::read(dir.path().join("0.jnl")).unwrap(), [0, 0, 7]);
    }
}

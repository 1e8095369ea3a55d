//! Backups and restores of the database.
//!
//! A backup is one versioned file written from **one read snapshot**
//! (`Store::read`, then every table's raw entries), so it is consistent — an order,
//! its grant and its outbox events are all in it or all not — while payd keeps
//! serving. One file rather than a copy of fjall's directory: it can be checked
//! (a SHA-256 trailer), copied and uploaded as is, and it does not depend on
//! fjall's on-disk format, so it is also the way to another storage engine.
//!
//! Format (integers big-endian): `PAYDBAK\0`, format version (u32, 2), the data
//! format of the database it was taken from (u32; absent in version 1, whose backups
//! all hold data format 1), taken-at
//! (i64 ms since the epoch), table count (u32); per table its name (u16 length +
//! UTF-8), entry count (u64) and entries (u32 length + key, u32 length + value, the
//! stored bytes exactly); then the SHA-256 of everything before it.
//!
//! fjall 3.1 has no read-only mode and holds an exclusive lock on `<dir>/lock`
//! while a database is open, so a second process cannot read the live database.
//! `payd backup` therefore asks the running server (`POST /api/v1/admin/backup`) to
//! write the file, and opens the database itself only when no server holds it.
//! `payd restore` refuses a directory whose lock is held, and a non-empty one unless
//! forced (the old directory is then moved aside, never deleted).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use payd_actors::model::Timestamp;
use payd_storage::{StorageError, Store, StoreOptions};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"PAYDBAK\0";
const FORMAT_VERSION: u32 = 2;
/// Entries per storage command when restoring.
const RESTORE_BATCH: usize = 1000;
/// fjall's lock file inside a database directory (fjall 3.1.13, `src/file.rs`).
const FJALL_LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0} exists; a backup never overwrites a file")]
    Exists(PathBuf),
    #[error("{0} is in use by a running payd; stop it before restoring")]
    Live(PathBuf),
    #[error("{0} is not empty; pass --force to move it aside and restore anyway")]
    NotEmpty(PathBuf),
    #[error("{path} is not a usable payd backup: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("no payd database at {0}")]
    NoDatabase(PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub path: PathBuf,
    pub taken_at: Timestamp,
    /// (table, entries), in file order.
    pub tables: Vec<(String, u64)>,
    pub bytes: u64,
    /// The data format of the database it was taken from (see
    /// `payd_storage::Migration`); a restore migrates it to this build's.
    pub data_format: u32,
}

impl BackupSummary {
    pub fn entries(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// A writer that hashes what passes through it and counts the bytes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn len_u32(n: usize) -> std::io::Result<[u8; 4]> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| std::io::Error::other("entry larger than 4 GiB"))
}

/// Writes a backup of `tables` from one snapshot of `store` to `dest` (which must not
/// exist): first to `dest.partial`, synced, then renamed, so `dest` is whole or
/// absent. Blocking: call it from `spawn_blocking`.
pub fn export(
    store: &Store,
    tables: &[&'static str],
    dest: &Path,
    now: Timestamp,
) -> Result<BackupSummary, BackupError> {
    if dest.exists() {
        return Err(BackupError::Exists(dest.to_path_buf()));
    }
    let partial = with_suffix(dest, ".partial");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(io(format!("creating {}", partial.display())))?;
    let written = write_snapshot(store, tables, file, now);
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if dest.exists() {
        let _ = std::fs::remove_file(&partial);
        return Err(BackupError::Exists(dest.to_path_buf()));
    }
    std::fs::rename(&partial, dest).map_err(io(format!("renaming to {}", dest.display())))?;
    sync_parent(dest)?;
    Ok(BackupSummary {
        path: dest.to_path_buf(),
        ..summary
    })
}

fn write_snapshot(
    store: &Store,
    tables: &[&'static str],
    file: File,
    now: Timestamp,
) -> Result<BackupSummary, BackupError> {
    let view = store.read()?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let werr = io("writing the backup");
    let mut counts = Vec::new();
    let result: Result<(), BackupError> = (|| {
        w.write_all(MAGIC).map_err(io("writing the backup"))?;
        w.write_all(&FORMAT_VERSION.to_be_bytes())
            .map_err(io("writing the backup"))?;
        w.write_all(&store.format_version().to_be_bytes())
            .map_err(io("writing the backup"))?;
        w.write_all(&now.ms().to_be_bytes())
            .map_err(io("writing the backup"))?;
        w.write_all(&len_u32(tables.len()).map_err(io("writing the backup"))?)
            .map_err(io("writing the backup"))?;
        for &table in tables {
            // One table in memory at a time; every table from the same snapshot.
            let entries = view.raw_entries(table)?;
            let name = table.as_bytes();
            let name_len = u16::try_from(name.len()).map_err(|_| BackupError::Format {
                path: PathBuf::new(),
                reason: format!("table name {table} too long"),
            })?;
            let mut put = |bytes: &[u8]| w.write_all(bytes).map_err(io("writing the backup"));
            put(&name_len.to_be_bytes())?;
            put(name)?;
            put(&(entries.len() as u64).to_be_bytes())?;
            for (k, v) in &entries {
                put(&len_u32(k.len()).map_err(io("writing the backup"))?)?;
                put(k)?;
                put(&len_u32(v.len()).map_err(io("writing the backup"))?)?;
                put(v)?;
            }
            counts.push((table.to_string(), entries.len() as u64));
        }
        Ok(())
    })();
    result?;
    let digest = w.hash.clone().finalize();
    w.inner.write_all(&digest).map_err(werr)?;
    let bytes = w.bytes + digest.len() as u64;
    let file = w.inner.into_inner().map_err(|e| BackupError::Io {
        what: "flushing the backup".into(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("syncing the backup"))?;
    Ok(BackupSummary {
        path: PathBuf::new(),
        taken_at: now,
        tables: counts,
        bytes,
        data_format: store.format_version(),
    })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn sync_parent(path: &Path) -> Result<(), BackupError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", parent.display())))
}

/// Raw (key, value) pairs of one table, as stored.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// Called with a table's name and a batch of its entries, in file order.
type Visit<'a> = dyn FnMut(&str, Entries) -> Result<(), BackupError> + 'a;

/// Reads a backup: checks its magic and its SHA-256 trailer, then parses it and hands
/// every table's entries to `visit` in order (when given).
fn read_backup(
    src: &Path,
    mut visit: Option<&mut Visit<'_>>,
) -> Result<BackupSummary, BackupError> {
    let bad = |reason: &str| BackupError::Format {
        path: src.to_path_buf(),
        reason: reason.to_string(),
    };
    let file = File::open(src).map_err(io(format!("opening {}", src.display())))?;
    let total = file
        .metadata()
        .map_err(io(format!("reading {}", src.display())))?
        .len();
    if total < (MAGIC.len() + 4 + 8 + 4 + 32) as u64 {
        return Err(bad("too short"));
    }
    let body_len = total - 32;
    // The magic, then the checksum over everything, before anything is parsed: a
    // damaged file is reported as damaged, whatever structure the damage breaks.
    {
        let mut r = BufReader::with_capacity(1 << 20, &file);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut left = body_len;
        let mut first = true;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            r.read_exact(&mut buf[..n])
                .map_err(io("reading the backup"))?;
            if first && !buf.starts_with(MAGIC) {
                return Err(bad("not a payd backup (wrong magic)"));
            }
            first = false;
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        let mut trailer = [0u8; 32];
        r.read_exact(&mut trailer)
            .map_err(io("reading the backup's checksum"))?;
        if hash.finalize().as_slice() != trailer {
            return Err(bad("checksum mismatch (the file is damaged)"));
        }
    }
    let mut file = file;
    file.seek(SeekFrom::Start(0))
        .map_err(io("reading the backup"))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut read = 0u64;
    let mut take = |r: &mut BufReader<File>, n: usize| -> Result<Vec<u8>, BackupError> {
        if read + n as u64 > body_len {
            return Err(bad("truncated"));
        }
        let mut buf = vec![0; n];
        r.read_exact(&mut buf).map_err(io("reading the backup"))?;
        read += n as u64;
        Ok(buf)
    };
    let be_u32 = |b: Vec<u8>| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if take(&mut r, MAGIC.len())? != MAGIC {
        return Err(bad("not a payd backup (wrong magic)"));
    }
    let version = be_u32(take(&mut r, 4)?);
    let data_format = match version {
        1 => 1,
        FORMAT_VERSION => be_u32(take(&mut r, 4)?),
        _ => {
            return Err(bad(&format!(
                "format version {version}; this build reads up to {FORMAT_VERSION}"
            )));
        }
    };
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&take(&mut r, 8)?);
    let taken_at = Timestamp(i64::from_be_bytes(ts));
    let table_count = be_u32(take(&mut r, 4)?);
    let mut tables = Vec::new();
    for _ in 0..table_count {
        let n = take(&mut r, 2)?;
        let name_len = usize::from(u16::from_be_bytes([n[0], n[1]]));
        let name = String::from_utf8(take(&mut r, name_len)?)
            .map_err(|_| bad("table name is not UTF-8"))?;
        let mut c = [0u8; 8];
        c.copy_from_slice(&take(&mut r, 8)?);
        let count = u64::from_be_bytes(c);
        let mut chunk = Vec::new();
        for _ in 0..count {
            let klen = be_u32(take(&mut r, 4)?) as usize;
            let k = take(&mut r, klen)?;
            let vlen = be_u32(take(&mut r, 4)?) as usize;
            let v = take(&mut r, vlen)?;
            if let Some(visit) = visit.as_deref_mut() {
                chunk.push((k, v));
                if chunk.len() >= RESTORE_BATCH {
                    visit(&name, std::mem::take(&mut chunk))?;
                }
            }
        }
        if let Some(visit) = visit.as_deref_mut()
            && !chunk.is_empty()
        {
            visit(&name, chunk)?;
        }
        tables.push((name, count));
    }
    if read != body_len {
        return Err(bad("trailing bytes after the last table"));
    }
    Ok(BackupSummary {
        path: src.to_path_buf(),
        taken_at,
        tables,
        bytes: total,
        data_format,
    })
}

/// Checks a backup file end to end without restoring it.
pub fn verify(src: &Path) -> Result<BackupSummary, BackupError> {
    read_backup(src, None)
}

/// Whether a running payd (any process) holds the database in `dir` open.
pub fn in_use(dir: &Path) -> Result<bool, BackupError> {
    let lock = dir.join(FJALL_LOCK_FILE);
    let file = match OpenOptions::new().read(true).write(true).open(&lock) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(format!("opening {}", lock.display()))(e)),
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            Ok(false)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(io(format!("locking {}", lock.display()))(e)),
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io(format!("reading {}", dir.display()))(e)),
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub backup: BackupSummary,
    /// Where the directory that was there before went (`--force`).
    pub moved_aside: Option<PathBuf>,
}

/// Restores the backup `src` into the data directory `dir`: refused while a payd
/// holds `dir`, and for a non-empty `dir` unless `force` (which moves it aside to
/// `<dir>.before-restore-<unix time>`). The file is checked whole before anything
/// is touched — including that this build knows each of its tables (`known`) —
/// and the database is built beside `dir`, then renamed into place.
pub async fn restore(
    src: &Path,
    dir: &Path,
    known: &[&'static str],
    force: bool,
    now: Timestamp,
) -> Result<RestoreSummary, BackupError> {
    if in_use(dir)? {
        return Err(BackupError::Live(dir.to_path_buf()));
    }
    let empty = is_empty_dir(dir)?;
    if !empty && !force {
        return Err(BackupError::NotEmpty(dir.to_path_buf()));
    }
    let checked = {
        let src = src.to_path_buf();
        tokio::task::spawn_blocking(move || verify(&src))
            .await
            .map_err(|e| io("checking the backup")(std::io::Error::other(e.to_string())))??
    };
    let building = with_suffix(dir, ".restoring");
    if building.exists() {
        std::fs::remove_dir_all(&building)
            .map_err(io(format!("removing {}", building.display())))?;
    }
    let mut tables: Vec<&'static str> = Vec::new();
    for (name, _) in &checked.tables {
        match known.iter().find(|t| **t == name.as_str()) {
            Some(t) => tables.push(t),
            None => {
                return Err(BackupError::Format {
                    path: src.to_path_buf(),
                    reason: format!(
                        "table {name} is unknown to this build (a backup of a newer payd?)"
                    ),
                });
            }
        }
    }
    let newest = store_options(&building, tables.clone(), u32::MAX);
    if checked.data_format > newest.format_version() {
        return Err(BackupError::Format {
            path: src.to_path_buf(),
            reason: format!(
                "taken from a newer payd (data format {}); this build reads up to data format {}",
                checked.data_format,
                newest.format_version()
            ),
        });
    }
    // Loaded as the data format it was taken at, then migrated like any database
    // an older payd left behind.
    let store = Store::open(store_options(
        &building,
        tables.clone(),
        checked.data_format,
    ))?;
    let written = load_into(&store, src, &tables).await;
    store.shutdown().await;
    drop(store);
    let backup = written?;
    if checked.data_format < newest.format_version() {
        Store::open(newest)?.shutdown().await;
    }
    let moved_aside = if dir.exists() {
        if empty {
            std::fs::remove_dir(dir).map_err(io(format!("removing {}", dir.display())))?;
            None
        } else {
            let aside = with_suffix(dir, &format!(".before-restore-{}", now.ms() / 1000));
            std::fs::rename(dir, &aside).map_err(io(format!("moving {} aside", dir.display())))?;
            Some(aside)
        }
    } else {
        None
    };
    std::fs::rename(&building, dir).map_err(io(format!(
        "renaming {} to {}",
        building.display(),
        dir.display()
    )))?;
    sync_parent(dir)?;
    Ok(RestoreSummary {
        backup,
        moved_aside,
    })
}

/// Streams the backup's entries into `store`, one storage command per batch.
async fn load_into(
    store: &Store,
    src: &Path,
    tables: &[&'static str],
) -> Result<BackupSummary, BackupError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(&'static str, Vec<(Vec<u8>, Vec<u8>)>)>(4);
    let reader = {
        let src = src.to_path_buf();
        let tables = tables.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut visit = |name: &str, entries: Vec<(Vec<u8>, Vec<u8>)>| {
                let table = tables.iter().copied().find(|t| *t == name).ok_or_else(|| {
                    BackupError::Format {
                        path: src.clone(),
                        reason: format!("unexpected table {name}"),
                    }
                })?;
                tx.blocking_send((table, entries))
                    .map_err(|_| io("restoring")(std::io::Error::other("writer stopped")))
            };
            read_backup(&src, Some(&mut visit))
        })
    };
    let mut failed = None;
    while let Some((table, entries)) = rx.recv().await {
        if failed.is_some() {
            continue;
        }
        let wrote = store
            .submit(move |ctx| {
                for (k, v) in entries {
                    ctx.put_raw(table, k, v);
                }
                Ok::<(), StorageError>(())
            })
            .await
            .and_then(|r| r);
        if let Err(e) = wrote {
            failed = Some(e);
            rx.close();
        }
    }
    let read = reader
        .await
        .map_err(|e| io("restoring")(std::io::Error::other(e.to_string())))?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    read
}

/// Opens the database in `dir` (no payd may be running on it) just long enough to
/// write a backup of `tables` to `dest`.
pub async fn export_offline(
    dir: &Path,
    tables: Vec<&'static str>,
    dest: &Path,
    now: Timestamp,
) -> Result<BackupSummary, BackupError> {
    if !dir.join(FJALL_LOCK_FILE).exists() {
        return Err(BackupError::NoDatabase(dir.to_path_buf()));
    }
    let store = Store::open(store_options(dir, tables.clone(), u32::MAX))?;
    let exported = {
        let store = store.clone();
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || export(&store, &tables, &dest, now))
            .await
            .map_err(|e| io("writing the backup")(std::io::Error::other(e.to_string())))
    };
    store.shutdown().await;
    exported?
}

/// How backups open a database: `tables`, and the migrations up to data format
/// `up_to` (`u32::MAX`: all of this build's).
fn store_options(dir: &Path, tables: Vec<&'static str>, up_to: u32) -> StoreOptions {
    let mut opts = StoreOptions::new(dir, tables);
    opts.migrations = payd_actors::migrations::migrations()
        .into_iter()
        .filter(|m| m.to <= up_to)
        .collect();
    opts
}

// ---- the command line ----

fn describe(s: &BackupSummary) -> String {
    format!(
        "{}: {} entries in {} tables, {} bytes, taken at {}",
        s.path.display(),
        s.entries(),
        s.tables.len(),
        s.bytes,
        crate::http::views::rfc3339(s.taken_at)
    )
}

fn now() -> Timestamp {
    use payd_actors::clock::Clock;
    payd_actors::clock::SystemClock.now()
}

/// The URL a CLI on the same host reaches the server at: `server.bind`, with an
/// unspecified address replaced by loopback.
pub fn local_url(cfg: &crate::config::Config) -> String {
    let mut addr = cfg.server.bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// `payd backup DEST`: while payd runs (it holds the database), asks it to write the
/// backup (`POST /api/v1/admin/backup`, with a short-lived admin token signed with
/// `auth.jwt_secret`); otherwise opens the database itself. Returns what to print.
pub async fn backup_command(
    cfg: &crate::config::Config,
    dest: &Path,
    url: Option<String>,
) -> Result<String, String> {
    let dest = std::path::absolute(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let dir = &cfg.storage.path;
    if !in_use(dir).map_err(|e| e.to_string())? {
        let s = export_offline(dir, crate::app::store_tables(), &dest, now())
            .await
            .map_err(|e| e.to_string())?;
        return Ok(format!(
            "backup written (payd was not running) to {}",
            describe(&s)
        ));
    }
    let base = url.unwrap_or_else(|| local_url(cfg));
    let now_secs = u64::try_from(now().ms() / 1000).unwrap_or(0);
    let token = crate::auth::Jwt::new(&cfg.auth).mint("payd-backup-cli", true, now_secs, 300);
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/admin/backup",
            base.trim_end_matches('/')
        ))
        .bearer_auth(token)
        .json(&serde_json::json!({ "dest": dest.display().to_string() }))
        .send()
        .await
        .map_err(|e| {
            format!(
                "payd holds {} but does not answer at {base}: {} (use --url)",
                dir.display(),
                e.without_url()
            )
        })?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("no detail");
        return Err(format!("payd refused the backup ({status}): {detail}"));
    }
    Ok(format!(
        "backup written by the running payd to {}: {} entries, {} bytes, taken at {}",
        body["dest"].as_str().unwrap_or_default(),
        body["entries"],
        body["bytes"],
        body["taken_at"].as_str().unwrap_or_default()
    ))
}

/// `payd restore SRC [--force]` into `storage.path`.
pub async fn restore_command(
    cfg: &crate::config::Config,
    src: &Path,
    force: bool,
) -> Result<String, String> {
    let dir = &cfg.storage.path;
    let done = restore(src, dir, &crate::app::store_tables(), force, now())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = format!("restored {} into {}", describe(&done.backup), dir.display());
    if let Some(aside) = done.moved_aside {
        out.push_str(&format!(
            "; the previous data directory is kept at {}",
            aside.display()
        ));
    }
    Ok(out)
}

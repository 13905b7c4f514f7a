//! Where the claim cache keeps its entries: in memory, in an embedded SQLite file (the default: survives
//! restarts, no server), or in Redis (shared by the reward workers of a cluster).
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use spar_core::traits::ClaimVerdict;
use spar_core::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One cached verdict with the embedding the semantic level compares against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub claim: String,
    pub verdict: ClaimVerdict,
    /// Id of the encoder that produced `embedding`.
    pub encoder: String,
    pub embedding: Vec<f32>,
}

/// A key-value store of cache entries, partitioned by namespace.
#[async_trait]
pub trait CacheBackend: Send + Sync {
    fn name(&self) -> &'static str;
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<CacheEntry>>;
    async fn put(&self, namespace: &str, key: &str, entry: &CacheEntry) -> Result<()>;
    /// Every entry of a namespace (builds the semantic index at start-up).
    async fn load_all(&self, namespace: &str) -> Result<Vec<(String, CacheEntry)>>;
}

/// Process-local, lost at exit.
#[derive(Default)]
pub struct MemoryBackend {
    map: Mutex<HashMap<(String, String), CacheEntry>>,
}

#[async_trait]
impl CacheBackend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }
    async fn get(&self, ns: &str, key: &str) -> Result<Option<CacheEntry>> {
        Ok(self
            .map
            .lock()
            .expect("memory cache lock")
            .get(&(ns.to_string(), key.to_string()))
            .cloned())
    }
    async fn put(&self, ns: &str, key: &str, entry: &CacheEntry) -> Result<()> {
        self.map
            .lock()
            .expect("memory cache lock")
            .insert((ns.to_string(), key.to_string()), entry.clone());
        Ok(())
    }
    async fn load_all(&self, ns: &str) -> Result<Vec<(String, CacheEntry)>> {
        Ok(self
            .map
            .lock()
            .expect("memory cache lock")
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|((_, k), e)| (k.clone(), e.clone()))
            .collect())
    }
}

/// Never stores anything: every lookup misses (`cache = "off"`).
pub struct NoBackend;

#[async_trait]
impl CacheBackend for NoBackend {
    fn name(&self) -> &'static str {
        "off"
    }
    async fn get(&self, _: &str, _: &str) -> Result<Option<CacheEntry>> {
        Ok(None)
    }
    async fn put(&self, _: &str, _: &str, _: &CacheEntry) -> Result<()> {
        Ok(())
    }
    async fn load_all(&self, _: &str) -> Result<Vec<(String, CacheEntry)>> {
        Ok(vec![])
    }
}

/// An embedded SQLite file. Writes are committed one by one in WAL mode with `synchronous = NORMAL`: a crash of
/// the process loses at most the verdict being written; a crash of the machine may also lose the verdicts since
/// the last WAL checkpoint, never the file's consistency. (`FULL`, SQLite's default, syncs the disk at every
/// commit: 0.34 against 0.026 ms a verdict on the development VM, and a round checks hundreds of claims while
/// its scoring waits; what a lost verdict costs is one more check.) Embeddings are stored as little-endian f32
/// blobs.
pub struct SqliteBackend {
    path: PathBuf,
    conn: Mutex<rusqlite::Connection>,
}

impl SqliteBackend {
    /// Opens (or creates) the cache file at `path`, owner-only: missing folders 0700, the file 0600 (SQLite
    /// gives its `-wal` and `-shm` files the database file's mode). An existing file is tightened to 0600: its
    /// claims came from consultations.
    pub fn open(path: &Path) -> Result<SqliteBackend> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            spar_core::fsio::create_private_dirs(dir)?;
        }
        owner_only(path)?;
        let err = |e: rusqlite::Error| Error::invalid(path.display(), format!("claim cache: {e}"));
        let conn = rusqlite::Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS claims (
                ns TEXT NOT NULL, key TEXT NOT NULL, claim TEXT NOT NULL, verdict TEXT NOT NULL,
                encoder TEXT NOT NULL, embedding BLOB NOT NULL, PRIMARY KEY (ns, key))",
        )
        .map_err(err)?;
        Ok(SqliteBackend {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::invalid(self.path.display(), format!("claim cache: {e}"))
    }

    fn row(
        &self,
        claim: String,
        verdict: String,
        encoder: String,
        blob: Vec<u8>,
    ) -> Result<CacheEntry> {
        let verdict = serde_json::from_str(&verdict).map_err(|e| self.err(e))?;
        let embedding = blob
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(CacheEntry {
            claim,
            verdict,
            encoder,
            embedding,
        })
    }
}

/// Creates `path` empty with mode 0600 before SQLite opens it (SQLite would create it with the umask's mode), or
/// tightens an existing file and its `-wal` / `-shm` companions to 0600.
fn owner_only(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    let _ = path;
    Ok(())
}

#[async_trait]
impl CacheBackend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    async fn get(&self, ns: &str, key: &str) -> Result<Option<CacheEntry>> {
        use rusqlite::OptionalExtension;
        let conn = self.conn.lock().expect("sqlite cache lock");
        let r = conn
            .query_row(
                "SELECT claim, verdict, encoder, embedding FROM claims WHERE ns = ?1 AND key = ?2",
                [ns, key],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.err(e))?;
        r.map(|(c, v, e, b)| self.row(c, v, e, b)).transpose()
    }
    async fn put(&self, ns: &str, key: &str, entry: &CacheEntry) -> Result<()> {
        let verdict = serde_json::to_string(&entry.verdict).map_err(|e| self.err(e))?;
        let blob: Vec<u8> = entry
            .embedding
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let conn = self.conn.lock().expect("sqlite cache lock");
        conn.execute(
            "INSERT OR REPLACE INTO claims (ns, key, claim, verdict, encoder, embedding) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![ns, key, entry.claim, verdict, entry.encoder, blob],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }
    async fn load_all(&self, ns: &str) -> Result<Vec<(String, CacheEntry)>> {
        let conn = self.conn.lock().expect("sqlite cache lock");
        let mut stmt = conn
            .prepare("SELECT key, claim, verdict, encoder, embedding FROM claims WHERE ns = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([ns], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (k, c, v, e, b) = r.map_err(|e| self.err(e))?;
            out.push((k, self.row(c, v, e, b)?));
        }
        Ok(out)
    }
}

/// A Redis server: one hash per namespace (`spar:claims:<ns>`), field = normalised claim, value = JSON entry.
pub struct RedisBackend {
    url: String,
    conn: redis::aio::MultiplexedConnection,
}

impl RedisBackend {
    pub async fn connect(url: &str) -> Result<RedisBackend> {
        let err = |e: redis::RedisError| {
            Error::external("claim cache (redis)", format!("{url}: {e}"), true)
        };
        let client = redis::Client::open(url).map_err(err)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(err)?;
        Ok(RedisBackend {
            url: url.to_string(),
            conn,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::external("claim cache (redis)", format!("{}: {e}", self.url), true)
    }

    fn hash(ns: &str) -> String {
        format!("spar:claims:{ns}")
    }
}

#[async_trait]
impl CacheBackend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }
    async fn get(&self, ns: &str, key: &str) -> Result<Option<CacheEntry>> {
        let mut con = self.conn.clone();
        let v: Option<String> = redis::cmd("HGET")
            .arg(Self::hash(ns))
            .arg(key)
            .query_async(&mut con)
            .await
            .map_err(|e| self.err(e))?;
        v.map(|s| serde_json::from_str(&s).map_err(|e| self.err(e)))
            .transpose()
    }
    async fn put(&self, ns: &str, key: &str, entry: &CacheEntry) -> Result<()> {
        let mut con = self.conn.clone();
        let json = serde_json::to_string(entry).map_err(|e| self.err(e))?;
        let _: i64 = redis::cmd("HSET")
            .arg(Self::hash(ns))
            .arg(key)
            .arg(json)
            .query_async(&mut con)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
    async fn load_all(&self, ns: &str) -> Result<Vec<(String, CacheEntry)>> {
        let mut con = self.conn.clone();
        let all: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(Self::hash(ns))
            .query_async(&mut con)
            .await
            .map_err(|e| self.err(e))?;
        all.into_iter()
            .map(|(k, v)| Ok((k, serde_json::from_str(&v).map_err(|e| self.err(e))?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    /// WAL with `synchronous = NORMAL`: commits reach the OS (a killed process loses nothing committed) without
    /// a disk sync each (see [`super::SqliteBackend`]).
    #[test]
    fn sqlite_cache_commits_to_the_wal_without_a_sync_each() {
        let dir = tempfile::tempdir().unwrap();
        let b = super::SqliteBackend::open(&dir.path().join("claims.sqlite")).unwrap();
        let conn = b.conn.lock().unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 1), "1 is NORMAL");
    }
}

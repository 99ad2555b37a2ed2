//! The `file://` store: a folder with the same layout as a bucket. A file is linked into place
//! when the spool is on the same file system (no copy, no extra disk), copied otherwise, and
//! always appears under its name by a rename: whole or absent.

use std::path::{Path, PathBuf};

use crate::{ObjectInfo, ObjectStore, StoreError};

#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`; keys with `..` or absolute parts are refused.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        let safe = !key.is_empty() && Path::new(key).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !safe {
            return Err(io_err("resolve", key, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a plain relative key")));
        }
        Ok(self.root.join(key))
    }

    pub async fn check(&self) -> Result<(), StoreError> {
        let probe = self.root.join(".recfleet-store-check");
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&root)?;
            std::fs::write(&probe, b"ok")?;
            std::fs::remove_file(&probe)
        })
        .await
        .expect("the check does not panic")
        .map_err(|e| io_err("write", &self.root.display().to_string(), e))
    }
}

fn io_err(op: &'static str, key: &str, source: std::io::Error) -> StoreError {
    StoreError::Io { op, key: key.to_string(), source }
}

/// A temporary name beside `dest` that no concurrent writer shares.
fn temp_beside(dest: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    dest.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

fn put_file_blocking(src: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = temp_beside(dest);
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp)?;
        std::fs::File::open(&tmp)?.sync_data()?;
    }
    let renamed = std::fs::rename(&tmp, dest);
    // `rename` of two links to one inode does nothing and leaves `tmp` behind (a file put again
    // unchanged, already linked at `dest`); on an error too, `tmp` must not stay.
    if renamed.is_err() || tmp.symlink_metadata().is_ok() {
        let _ = std::fs::remove_file(&tmp);
    }
    renamed
}

fn put_bytes_blocking(bytes: &[u8], dest: &Path) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = temp_beside(dest);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&tmp, dest)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.expect("file work does not panic")
}

impl ObjectStore for FsStore {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let (src, dest) = (path.to_path_buf(), self.path_of(key)?);
        blocking(move || put_file_blocking(&src, &dest)).await.map_err(|e| io_err("put", key, e))
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let dest = self.path_of(key)?;
        blocking(move || put_bytes_blocking(&bytes, &dest)).await.map_err(|e| io_err("put", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.path_of(key)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("get", key, e)),
        }
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<bool, StoreError> {
        match tokio::fs::copy(self.path_of(key)?, path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("get", key, e)),
        }
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut listed = self.list(prefix).await?;
        listed.retain(|o| o.name.as_str() > after);
        Ok(listed)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let dir = self.path_of(prefix.trim_end_matches('/'))?;
        let listed = blocking(move || {
            let mut out = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let meta = entry.metadata()?;
                if meta.is_file() && !name.starts_with('.') {
                    out.push(ObjectInfo { name, bytes: meta.len() });
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await;
        listed.map_err(|e| io_err("list", prefix, e))
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_dir_all(self.path_of(prefix.trim_end_matches('/'))?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("delete", prefix, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_get_list_delete() {
        let root = tempfile::tempdir().unwrap();
        let store = FsStore::new(root.path().join("store"));
        store.check().await.unwrap();
        let src = root.path().join("seg_000001.m4s");
        std::fs::write(&src, b"segment").unwrap();
        store.put_file("recordings/r1/seg_000001.m4s", &src).await.unwrap();
        store.put_bytes("recordings/r1/manifest.json", b"{}".to_vec()).await.unwrap();
        assert_eq!(store.get("recordings/r1/seg_000001.m4s").await.unwrap().unwrap(), b"segment");
        assert_eq!(store.get("recordings/r1/none").await.unwrap(), None);
        let names: Vec<String> = store.list("recordings/r1/").await.unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(names, ["manifest.json", "seg_000001.m4s"]);
        assert!(store.list("recordings/nothing/").await.unwrap().is_empty());
        store.put_bytes("recordings/r1/seg_000002.m4s", b"two".to_vec()).await.unwrap();
        let after: Vec<String> = store.list_after("recordings/r1/", "seg_000001.m4s").await.unwrap().into_iter().map(|o| o.name).collect();
        assert_eq!(after, ["seg_000002.m4s"], "only what sorts after the known segment");
        store.delete_prefix("recordings/r1/").await.unwrap();
        assert!(store.list("recordings/r1/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_put_twice_leaves_no_temporary_file() {
        let root = tempfile::tempdir().unwrap();
        let store = FsStore::new(root.path().join("store"));
        let src = root.path().join("events.json");
        std::fs::write(&src, b"[]").unwrap();
        // The second put links the same inode that is already at the destination.
        store.put_file("recordings/r1/events.json", &src).await.unwrap();
        store.put_file("recordings/r1/events.json", &src).await.unwrap();
        let dir = root.path().join("store/recordings/r1");
        let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["events.json"]);
        assert_eq!(std::fs::read(dir.join("events.json")).unwrap(), b"[]");
    }

    #[tokio::test]
    async fn keys_cannot_leave_the_root() {
        let root = tempfile::tempdir().unwrap();
        let store = FsStore::new(root.path().to_path_buf());
        assert!(store.put_bytes("../escape", b"x".to_vec()).await.is_err());
        assert!(store.put_bytes("/etc/x", b"x".to_vec()).await.is_err());
    }
}

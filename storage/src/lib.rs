//! Where recordings are kept: a local folder (`file://DIR`, the default) or an S3 bucket
//! (`s3://bucket/prefix`, through `aws-sdk-s3` with the standard AWS configuration). Both hold
//! the same layout (DESIGN.md):
//!
//! ```text
//! recordings/<id>/init.mp4, seg_000001.m4s, ..., index.m3u8, manifest.json,
//!                 recording.mp4, events.json
//! ```
//!
//! Every write is whole or absent: a reader never sees half an object. This crate moves
//! bytes; it must not decide what to upload or when (the bot's uploader and the controller's
//! recovery do).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod fs;
mod s3;

pub use fs::FsStore;
pub use s3::S3Store;

/// Content types of the files a recording is made of.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("m4s") => "video/iso.segment",
        Some("mp4") => "video/mp4",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// The key of one file of a recording, relative to the store's root.
pub fn recording_key(recording_id: &str, name: &str) -> String {
    format!("recordings/{recording_id}/{name}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{op} {key}: {source}")]
    Io { op: &'static str, key: String, source: std::io::Error },
    #[error("{op} {key}: {message}")]
    S3 { op: &'static str, key: String, message: String },
    #[error("the bucket {bucket} cannot be used: {message}")]
    Bucket { bucket: String, message: String },
}

impl StoreError {
    /// A stable code for logs and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::BadUrl { .. } => "invalid_store_url",
            StoreError::Io { .. } | StoreError::S3 { .. } => "store_unavailable",
            StoreError::Bucket { .. } => "bucket_unavailable",
        }
    }
}

/// `file:///abs/dir` or `s3://bucket[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadUrl { url: url.to_string(), reason: reason.to_string() };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad("a file:// store needs an absolute path (file:///var/lib/recfleet)"));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !valid {
                return Err(bad("the bucket name must be 3-63 characters of a-z, 0-9, '-' and '.'"));
            }
            return Ok(StoreUrl::S3 { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() });
        }
        Err(bad("use file:///path or s3://bucket/prefix"))
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::File(path) => write!(f, "file://{}", path.display()),
            StoreUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            StoreUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// How to reach the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Path-style addressing (`http://host/bucket/key`), which S3-compatible servers need.
    pub path_style: bool,
    /// One attempt at one request; a store that does not answer within it counts as down.
    pub attempt_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { path_style: false, attempt_timeout: Duration::from_secs(20) }
    }
}

/// One object under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the prefix that was listed.
    pub name: String,
    pub bytes: u64,
}

/// What a store does. Both backends implement it; `Store` picks one at run time.
pub trait ObjectStore {
    /// Stores a local file under `key`, whole or not at all.
    fn put_file(&self, key: &str, path: &Path) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
    /// Stores `bytes` under `key`, whole or not at all.
    fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
    /// The object's bytes, or `None` when there is no such key.
    fn get(&self, key: &str) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Copies the object into a local file; false when there is no such key.
    fn get_to_file(&self, key: &str, path: &Path) -> impl std::future::Future<Output = Result<bool, StoreError>> + Send;
    /// The objects under `prefix` (which ends with `/`), names relative to it, sorted.
    fn list(&self, prefix: &str) -> impl std::future::Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send;
    /// The objects under `prefix` whose names sort after `after`, sorted: what was stored past a
    /// known segment, without listing the whole recording (S3's `start-after`).
    fn list_after(&self, prefix: &str, after: &str) -> impl std::future::Future<Output = Result<Vec<ObjectInfo>, StoreError>> + Send;
    /// Deletes every object under `prefix`.
    fn delete_prefix(&self, prefix: &str) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

/// The store a deployment uses.
#[derive(Debug, Clone)]
pub enum Store {
    Fs(FsStore),
    S3(S3Store),
}

impl Store {
    /// Opens the store `url` names. For S3 the credentials, region and endpoint come from the
    /// standard AWS configuration (environment, profile, task role, `AWS_ENDPOINT_URL`).
    pub async fn open(url: &StoreUrl, opts: &StoreOptions) -> Result<Store, StoreError> {
        Ok(match url {
            StoreUrl::File(dir) => Store::Fs(FsStore::new(dir.clone())),
            StoreUrl::S3 { bucket, prefix } => Store::S3(S3Store::connect(bucket, prefix, opts).await),
        })
    }

    /// Checks that the store can be used (the folder is writable, the bucket exists and the
    /// credentials open it), so a misconfigured deployment fails at start, not mid-meeting.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Store::Fs(s) => s.check().await,
            Store::S3(s) => s.check().await,
        }
    }

    /// A link to download `key`: a presigned GET valid for `expiry` for S3; `None` for a
    /// folder (the controller serves those itself).
    pub async fn download_url(&self, key: &str, expiry: Duration) -> Result<Option<String>, StoreError> {
        match self {
            Store::Fs(_) => Ok(None),
            Store::S3(s) => s.presigned_get(key, expiry).await.map(Some),
        }
    }

    /// The local folder of a `file://` store.
    pub fn local_root(&self) -> Option<&Path> {
        match self {
            Store::Fs(s) => Some(s.root()),
            Store::S3(_) => None,
        }
    }
}

impl ObjectStore for Store {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        match self {
            Store::Fs(s) => s.put_file(key, path).await,
            Store::S3(s) => s.put_file(key, path).await,
        }
    }
    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Store::Fs(s) => s.put_bytes(key, bytes).await,
            Store::S3(s) => s.put_bytes(key, bytes).await,
        }
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Fs(s) => s.get(key).await,
            Store::S3(s) => s.get(key).await,
        }
    }
    async fn get_to_file(&self, key: &str, path: &Path) -> Result<bool, StoreError> {
        match self {
            Store::Fs(s) => s.get_to_file(key, path).await,
            Store::S3(s) => s.get_to_file(key, path).await,
        }
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        match self {
            Store::Fs(s) => s.list(prefix).await,
            Store::S3(s) => s.list(prefix).await,
        }
    }
    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        match self {
            Store::Fs(s) => s.list_after(prefix, after).await,
            Store::S3(s) => s.list_after(prefix, after).await,
        }
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        match self {
            Store::Fs(s) => s.delete_prefix(prefix).await,
            Store::S3(s) => s.delete_prefix(prefix).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_print_back() {
        assert_eq!("file:///var/lib/x".parse::<StoreUrl>().unwrap(), StoreUrl::File("/var/lib/x".into()));
        assert_eq!(
            "s3://rec-bucket/prod/eu/".parse::<StoreUrl>().unwrap(),
            StoreUrl::S3 { bucket: "rec-bucket".into(), prefix: "prod/eu".into() }
        );
        assert_eq!("s3://rec-bucket".parse::<StoreUrl>().unwrap().to_string(), "s3://rec-bucket");
        assert_eq!("s3://rec-bucket/a/b".parse::<StoreUrl>().unwrap().to_string(), "s3://rec-bucket/a/b");
        for bad in ["file://relative", "s3://A_B", "s3://", "http://x", "/var/lib"] {
            let err = bad.parse::<StoreUrl>().unwrap_err();
            assert_eq!(err.code(), "invalid_store_url", "{bad}");
        }
    }

    #[test]
    fn keys_follow_the_layout() {
        assert_eq!(recording_key("rec_1", "seg_000001.m4s"), "recordings/rec_1/seg_000001.m4s");
        assert_eq!(content_type("index.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type("seg_000001.m4s"), "video/iso.segment");
    }
}

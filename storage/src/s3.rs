//! The `s3://bucket/prefix` store through `aws-sdk-s3`. Configuration is AWS's standard chain
//! (environment, profile, ECS task role, `AWS_ENDPOINT_URL`); path-style addressing is an option
//! for S3-compatible servers. Requests time out quickly, so an unreachable store is noticed in
//! seconds and the caller's own backoff takes over; one PUT is one whole object.

use std::path::Path;
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;

use crate::{content_type, ObjectInfo, ObjectStore, StoreError, StoreOptions};

/// Opening a TCP connection to the store takes at most this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The SDK's own attempts per request; the callers retry with their own backoff on top.
const SDK_ATTEMPTS: u32 = 2;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Without slashes at either end; may be empty.
    prefix: String,
}

fn s3_err<E: std::error::Error>(op: &'static str, key: &str, err: E) -> StoreError {
    StoreError::S3 { op, key: key.to_string(), message: DisplayErrorContext(&err).to_string() }
}

impl S3Store {
    pub async fn connect(bucket: &str, prefix: &str, opts: &StoreOptions) -> S3Store {
        let region = RegionProviderChain::default_provider().or_else("us-east-1");
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(opts.attempt_timeout)
            .build();
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .timeout_config(timeouts)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(SDK_ATTEMPTS))
            .load()
            .await;
        let conf = aws_sdk_s3::config::Builder::from(&shared).force_path_style(opts.path_style).build();
        S3Store { client: Client::from_conf(conf), bucket: bucket.to_string(), prefix: prefix.to_string() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    pub async fn check(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Bucket { bucket: self.bucket.clone(), message: DisplayErrorContext(&e).to_string() })
    }

    /// Creates the bucket when it is missing (tests and first deployments).
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        if self.check().await.is_ok() {
            return Ok(());
        }
        self.client
            .create_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Bucket { bucket: self.bucket.clone(), message: DisplayErrorContext(&e).to_string() })
    }

    pub async fn presigned_get(&self, key: &str, expiry: Duration) -> Result<String, StoreError> {
        let config = PresigningConfig::expires_in(expiry).map_err(|e| s3_err("presign", key, e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .presigned(config)
            .await
            .map_err(|e| s3_err("presign", key, e))?;
        Ok(request.uri().to_string())
    }

    async fn put(&self, key: &str, body: ByteStream) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .content_type(content_type(key))
            .body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_err("put", key, e))
    }
}

impl ObjectStore for S3Store {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        let body = ByteStream::from_path(path).await.map_err(|e| s3_err("read", &path.display().to_string(), e))?;
        self.put(key, body).await
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.put(key, ByteStream::from(bytes)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let resp = match self.client.get_object().bucket(&self.bucket).key(self.full_key(key)).send().await {
            Ok(resp) => resp,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(s3_err("get", key, e)),
        };
        let bytes = resp.body.collect().await.map_err(|e| s3_err("get", key, e))?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    async fn get_to_file(&self, key: &str, path: &Path) -> Result<bool, StoreError> {
        let resp = match self.client.get_object().bucket(&self.bucket).key(self.full_key(key)).send().await {
            Ok(resp) => resp,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(false),
            Err(e) => return Err(s3_err("get", key, e)),
        };
        let io = |e: std::io::Error| StoreError::Io { op: "get", key: key.to_string(), source: e };
        let mut reader = resp.body.into_async_read();
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        tokio::io::copy(&mut reader, &mut file).await.map_err(io)?;
        file.sync_data().await.map_err(io)?;
        Ok(true)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.list_after(prefix, "").await
    }

    async fn list_after(&self, prefix: &str, after: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full = self.full_key(prefix);
        let mut request = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full);
        if !after.is_empty() {
            request = request.start_after(format!("{full}{after}"));
        }
        let mut pages = request.into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_err("list", prefix, e))?;
            for obj in page.contents() {
                let Some(name) = obj.key().and_then(|k| k.strip_prefix(&full)) else { continue };
                if !name.is_empty() && !name.contains('/') {
                    out.push(ObjectInfo { name: name.to_string(), bytes: obj.size().unwrap_or(0).max(0) as u64 });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        let names = self.list(prefix).await?;
        for chunk in names.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|o| ObjectIdentifier::builder().key(self.full_key(&format!("{prefix}{}", o.name))).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| s3_err("delete", prefix, e))?;
            let delete = Delete::builder().set_objects(Some(objects)).build().map_err(|e| s3_err("delete", prefix, e))?;
            self.client.delete_objects().bucket(&self.bucket).delete(delete).send().await.map_err(|e| s3_err("delete", prefix, e))?;
        }
        Ok(())
    }
}

//! Who this bot is when ECS started it: a task launched in a batch (RunTask's `count`) carries
//! the batch's launch token and no bot id, so the bot names itself by its task's id, read from
//! the task metadata endpoint the ECS agent gives every container
//! (`ECS_CONTAINER_METADATA_URI_V4`). The controller matches the task to the bot it launched.

use std::time::Duration;

/// The variable the ECS agent sets in every container of a task.
pub const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";
/// The endpoint answers at once when it answers at all.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TaskIdError {
    #[error("no bot id: set RECFLEET_BOT_ID, or run as an ECS task ({METADATA_ENV} is not set)")]
    NotOnEcs,
    #[error("cannot read this task's metadata from {url}: {reason}")]
    Metadata { url: String, reason: String },
}

/// This task's id (the last part of its ARN).
pub async fn task_id() -> Result<String, TaskIdError> {
    let base = std::env::var(METADATA_ENV).map_err(|_| TaskIdError::NotOnEcs)?;
    let url = format!("{}/task", base.trim_end_matches('/'));
    let fail = |reason: String| TaskIdError::Metadata { url: url.clone(), reason };
    let client = reqwest::Client::builder().timeout(METADATA_TIMEOUT).build().map_err(|e| fail(e.to_string()))?;
    let body: serde_json::Value = client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail(e.to_string()))?
        .json()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let arn = body.get("TaskARN").and_then(|v| v.as_str()).ok_or_else(|| fail("no TaskARN in the answer".into()))?;
    task_id_of(arn).map(str::to_string).ok_or_else(|| fail(format!("{arn:?} is not a task ARN")))
}

/// `arn:aws:ecs:region:account:task/cluster/id` (or the old `task/id`) → `id`.
pub fn task_id_of(arn: &str) -> Option<&str> {
    let (_, path) = arn.split_once(":task/")?;
    let id = path.rsplit('/').next()?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_id_is_the_last_part_of_its_arn() {
        assert_eq!(task_id_of("arn:aws:ecs:us-east-1:123456789012:task/recfleet/0b9c1d2e3f"), Some("0b9c1d2e3f"));
        assert_eq!(task_id_of("arn:aws:ecs:us-east-1:123456789012:task/0b9c1d2e3f"), Some("0b9c1d2e3f"));
        assert_eq!(task_id_of("arn:aws:ecs:us-east-1:123456789012:cluster/recfleet"), None);
        assert_eq!(task_id_of("arn:aws:ecs:us-east-1:1:task/c/a?b=c"), None, "nothing that would break a URL's query");
        assert_eq!(task_id_of("arn:aws:ecs:us-east-1:1:task/c/"), None);
    }
}

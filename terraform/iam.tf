# Least privilege. The bot: put objects under the recordings prefix, nothing else. The
# controller: launch, tag, describe, list and stop tasks on this cluster, pass exactly the bot's
# two roles, and the bucket. Each execution role: its image, its log group, and (the
# controller's) its secrets.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:*"]
    }
  }
}

locals {
  cluster_arn     = "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:cluster/${var.name}"
  task_arns       = "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:task/${var.name}/*"
  bot_family_arns = "arn:${data.aws_partition.current.partition}:ecs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:task-definition/${var.name}-bot:*"
  ecr_repos       = "arn:${data.aws_partition.current.partition}:ecr:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:repository/*"
}

# Pulling images and writing logs, shared by both execution roles' policies.
data "aws_iam_policy_document" "pull_images" {
  statement {
    sid       = "EcrToken"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "EcrPull"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [local.ecr_repos]
  }
}

# The bucket and its key, for both task roles' policies: HeadBucket (is the store there?) and
# listing are authorized as s3:ListBucket; SSE-KMS needs the key for every put and get.
data "aws_iam_policy_document" "bucket_and_key" {
  statement {
    sid       = "Bucket"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.recordings.arn]
  }
  statement {
    sid       = "EncryptRecordings"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

# --- The bot ---

resource "aws_iam_role" "bot_execution" {
  name               = "${var.name}-bot-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "bot_execution" {
  source_policy_documents = [data.aws_iam_policy_document.pull_images.json]
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.bots.arn}:*"]
  }
}

resource "aws_iam_role_policy" "bot_execution" {
  name   = "pull-and-log"
  role   = aws_iam_role.bot_execution.id
  policy = data.aws_iam_policy_document.bot_execution.json
}

resource "aws_iam_role" "bot_task" {
  name               = "${var.name}-bot-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "bot_task" {
  source_policy_documents = [data.aws_iam_policy_document.bucket_and_key.json]
  statement {
    sid       = "PutRecordings"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.recordings.arn}/${var.recordings_prefix}/*"]
  }
}

resource "aws_iam_role_policy" "bot_task" {
  name   = "store-recordings"
  role   = aws_iam_role.bot_task.id
  policy = data.aws_iam_policy_document.bot_task.json
}

# --- The controller ---

resource "aws_iam_role" "controller_execution" {
  name               = "${var.name}-controller-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "controller_execution" {
  source_policy_documents = [data.aws_iam_policy_document.pull_images.json]
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.controller.arn}:*"]
  }
  statement {
    sid       = "Secrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = values(local.controller_secrets)
  }
  statement {
    sid       = "DecryptSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

resource "aws_iam_role_policy" "controller_execution" {
  name   = "pull-log-and-secrets"
  role   = aws_iam_role.controller_execution.id
  policy = data.aws_iam_policy_document.controller_execution.json
}

resource "aws_iam_role" "controller_task" {
  name               = "${var.name}-controller-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "controller_task" {
  source_policy_documents = [data.aws_iam_policy_document.bucket_and_key.json]
  statement {
    sid       = "LaunchBots"
    actions   = ["ecs:RunTask"]
    resources = [local.bot_family_arns]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [local.cluster_arn]
    }
  }
  statement {
    sid       = "ManageBots"
    actions   = ["ecs:StopTask", "ecs:DescribeTasks", "ecs:TagResource"]
    resources = [local.task_arns]
  }
  statement {
    sid       = "ListBots"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [local.cluster_arn]
    }
  }
  statement {
    sid       = "CheckCluster"
    actions   = ["ecs:DescribeClusters"]
    resources = [local.cluster_arn]
  }
  # DescribeTaskDefinition supports no resource-level permission.
  statement {
    sid       = "CheckTaskDefinition"
    actions   = ["ecs:DescribeTaskDefinition"]
    resources = ["*"]
  }
  statement {
    sid       = "PassBotRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.bot_execution.arn, aws_iam_role.bot_task.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
  statement {
    sid       = "Recordings"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.recordings.arn}/${var.recordings_prefix}/*"]
  }
}

resource "aws_iam_role_policy" "controller_task" {
  name   = "run-bots-and-recordings"
  role   = aws_iam_role.controller_task.id
  policy = data.aws_iam_policy_document.controller_task.json
}

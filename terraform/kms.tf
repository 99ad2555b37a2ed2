# One customer-managed key for the bucket, the logs, the secrets and the database.
resource "aws_kms_key" "this" {
  description         = "${var.name}: recordings, logs, secrets and state"
  enable_key_rotation = true
  policy              = local.kms_policy
  tags                = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# A key policy: "*" as the resource means this key.
locals {
  kms_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # The account administers the key; IAM policies then grant its use.
        Sid       = "Account"
        Effect    = "Allow"
        Action    = "kms:*"
        Resource  = "*"
        Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      },
      {
        # CloudWatch Logs encrypts this deployment's log groups.
        Sid       = "Logs"
        Effect    = "Allow"
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Principal = { Service = "logs.${data.aws_region.current.name}.amazonaws.com" }
        Condition = {
          ArnLike = {
            "kms:EncryptionContext:aws:logs:arn" = "arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:/${var.name}/*"
          }
        }
      },
    ]
  })
}

# The API key, the webhook signing secret and the database URL, read by the controller's task at
# start (the execution role fetches them; they never appear in the task definition).

resource "random_password" "api_key" {
  length  = 48
  special = false
}

resource "random_bytes" "webhook_secret" {
  length = 32
}

resource "aws_secretsmanager_secret" "api_key" {
  #checkov:skip=CKV2_AWS_57:The API key is rotated by the platform with its callers (put a new value, restart the service); there is no rotation Lambda to run.
  name        = "${var.name}/api-key"
  description = "recfleet: the API key (Authorization: Bearer) of the REST API"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "api_key" {
  secret_id     = aws_secretsmanager_secret.api_key.id
  secret_string = random_password.api_key.result
}

resource "aws_secretsmanager_secret" "webhook_secret" {
  #checkov:skip=CKV2_AWS_57:Webhook receivers verify with this key; rotating it is a coordinated change, not a Lambda's.
  name        = "${var.name}/webhook-secret"
  description = "recfleet: the Standard Webhooks signing key (whsec_...)"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "webhook_secret" {
  secret_id     = aws_secretsmanager_secret.webhook_secret.id
  secret_string = "whsec_${random_bytes.webhook_secret.base64}"
}

resource "aws_secretsmanager_secret" "database_url" {
  #checkov:skip=CKV2_AWS_57:The URL holds the password this module generates for RDS (or the platform's own URL); a new one means a controller restart, not a rotation Lambda.
  name        = "${var.name}/database-url"
  description = "recfleet: the controller's PostgreSQL URL"
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "database_url" {
  secret_id     = aws_secretsmanager_secret.database_url.id
  secret_string = local.create_db ? local.created_database_url : var.database_url
}

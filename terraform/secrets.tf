# The API key, the webhook signing secret and the database URL, read by the controller's task at
# start (the execution role fetches them; they never appear in the task definition). Each is
# the value of one controller variable (`controller_secrets` in locals.tf).

resource "random_password" "api_key" {
  length  = 48
  special = false
}

resource "random_bytes" "webhook_secret" {
  length = 32
}

locals {
  # Keys and descriptions only: for_each cannot take the (sensitive) values.
  secrets = {
    api-key        = "recfleet: the API key (Authorization: Bearer) of the REST API"
    webhook-secret = "recfleet: the Standard Webhooks signing key (whsec_...)"
    database-url   = "recfleet: the controller's PostgreSQL URL"
  }
  secret_values = {
    api-key        = random_password.api_key.result
    webhook-secret = "whsec_${random_bytes.webhook_secret.base64}"
    database-url   = local.create_db ? local.created_database_url : var.database_url
  }
}

resource "aws_secretsmanager_secret" "controller" {
  #checkov:skip=CKV2_AWS_57:Rotating these is a coordinated change (the API's callers, the webhook receivers, a new database password) and a controller restart, not a rotation Lambda's.
  for_each    = local.secrets
  name        = "${var.name}/${each.key}"
  description = each.value
  kms_key_id  = aws_kms_key.this.arn
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "controller" {
  for_each      = local.secrets
  secret_id     = aws_secretsmanager_secret.controller[each.key].id
  secret_string = local.secret_values[each.key]
}

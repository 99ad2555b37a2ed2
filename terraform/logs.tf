resource "aws_cloudwatch_log_group" "bots" {
  name              = "/${var.name}/bots"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "controller" {
  name              = "/${var.name}/controller"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

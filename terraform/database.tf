# The controller's state, when no database_url is given: RDS PostgreSQL, Multi-AZ, encrypted, TLS
# only. The controller connects with sslmode=require.

resource "random_password" "database" {
  count   = local.create_db ? 1 : 0
  length  = 40
  special = false
}

locals {
  created_database_url = local.create_db ? format(
    "postgres://recfleet:%s@%s/recfleet?sslmode=require",
    random_password.database[0].result,
    aws_db_instance.state[0].endpoint,
  ) : null
}

resource "aws_db_subnet_group" "state" {
  count      = local.create_db ? 1 : 0
  name       = "${var.name}-state"
  subnet_ids = var.private_subnet_ids
  tags       = local.tags
}

resource "aws_db_parameter_group" "state" {
  count  = local.create_db ? 1 : 0
  name   = "${var.name}-state"
  family = "postgres16"
  tags   = local.tags

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }
}

resource "aws_db_instance" "state" {
  #checkov:skip=CKV_AWS_118:Enhanced monitoring needs a monitoring role; Performance Insights and CloudWatch logs are on.
  #checkov:skip=CKV_AWS_161:The controller connects with a password from Secrets Manager; IAM database authentication would need a token refresher it does not have.
  count                               = local.create_db ? 1 : 0
  identifier                          = "${var.name}-state"
  engine                              = "postgres"
  engine_version                      = "16"
  instance_class                      = var.database_instance_class
  allocated_storage                   = 20
  max_allocated_storage               = 100
  storage_type                        = "gp3"
  storage_encrypted                   = true
  kms_key_id                          = aws_kms_key.this.arn
  db_name                             = "recfleet"
  username                            = "recfleet"
  password                            = random_password.database[0].result
  db_subnet_group_name                = aws_db_subnet_group.state[0].name
  parameter_group_name                = aws_db_parameter_group.state[0].name
  vpc_security_group_ids              = [aws_security_group.database[0].id]
  multi_az                            = true
  publicly_accessible                 = false
  backup_retention_period             = 7
  deletion_protection                 = true
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name}-state-final"
  copy_tags_to_snapshot               = true
  auto_minor_version_upgrade          = true
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = aws_kms_key.this.arn
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  iam_database_authentication_enabled = false
  tags                                = local.tags
}

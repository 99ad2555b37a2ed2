# capacity_mode ec2: an Auto Scaling group of ECS-optimized instances, scaled by ECS (managed
# scaling, target under 100 % for headroom) and protected from scale-in while they run bots.

resource "aws_iam_role" "instance" {
  count = local.ec2 ? 1 : 0
  name  = "${var.name}-instance"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ec2.amazonaws.com" } }]
  })
  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "instance" {
  count      = local.ec2 ? 1 : 0
  role       = aws_iam_role.instance[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "instance" {
  count = local.ec2 ? 1 : 0
  name  = "${var.name}-instance"
  role  = aws_iam_role.instance[0].name
}

resource "aws_launch_template" "bots" {
  count         = local.ec2 ? 1 : 0
  name_prefix   = "${var.name}-bots-"
  image_id      = var.ec2_ami_id
  instance_type = var.ec2_instance_type
  user_data     = base64encode("#!/bin/bash\necho ECS_CLUSTER=${var.name} >> /etc/ecs/ecs.config\necho ECS_ENABLE_CONTAINER_METADATA=true >> /etc/ecs/ecs.config\n")
  tags          = local.tags

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance[0].arn
  }
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  monitoring {
    enabled = true
  }
  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size = 100
      volume_type = "gp3"
      # The account's EBS key (aws/ebs): Auto Scaling may use it without a grant in this
      # module's key policy.
      encrypted = true
    }
  }
  network_interfaces {
    associate_public_ip_address = false
    security_groups             = [aws_security_group.bots.id]
  }

  lifecycle {
    precondition {
      condition     = can(regex("^ami-", var.ec2_ami_id))
      error_message = "capacity_mode ec2 needs ec2_ami_id: an ECS-optimized AMI (SSM parameter /aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id)."
    }
  }
}

resource "aws_autoscaling_group" "bots" {
  count                 = local.ec2 ? 1 : 0
  name_prefix           = "${var.name}-bots-"
  min_size              = 0
  max_size              = var.ec2_max_instances
  vpc_zone_identifier   = var.private_subnet_ids
  protect_from_scale_in = true

  launch_template {
    id      = aws_launch_template.bots[0].id
    version = "$Latest"
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

resource "aws_ecs_capacity_provider" "ec2" {
  count = local.ec2 ? 1 : 0
  name  = "${var.name}-ec2"
  tags  = local.tags

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.bots[0].arn
    managed_termination_protection = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = var.ec2_target_capacity_percent
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = 10
    }
  }
}

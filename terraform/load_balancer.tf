# The API and the bots' WebSocket, over HTTPS. The idle timeout outlasts the bots' heartbeat
# (every 2 s) by far, so a WebSocket is never cut for being quiet.

resource "aws_lb" "api" {
  #checkov:skip=CKV_AWS_91:Access logs need a log bucket of the platform's own; the controller logs every request it serves.
  #checkov:skip=CKV2_AWS_28:A WAF belongs to the platform's edge; the API takes API keys only and is internal by default.
  name                       = "${var.name}-api"
  load_balancer_type         = "application"
  internal                   = var.internal_load_balancer
  subnets                    = local.lb_subnet_ids
  security_groups            = [aws_security_group.load_balancer.id]
  idle_timeout               = 3600
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  tags                       = local.tags
}

resource "aws_lb_target_group" "controller" {
  name                 = "${var.name}-controller"
  port                 = local.controller_api
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = 30
  tags                 = local.tags

  # Ready means leading, with the state loaded: a standby or a draining controller answers 503.
  health_check {
    path                = local.controller_health_path
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.api.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn
  tags              = local.tags

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.controller.arn
  }
}

resource "aws_route53_record" "api" {
  count   = contains([""], var.route53_zone_id) ? 0 : 1
  zone_id = var.route53_zone_id
  name    = var.domain_name
  type    = "A"

  alias {
    name                   = aws_lb.api.dns_name
    zone_id                = aws_lb.api.zone_id
    evaluate_target_health = true
  }
}

# Bots: egress only. The controller: from the load balancer only. The database: from the
# controller only. The load balancer: HTTPS from the API's callers and from the bots.

resource "aws_security_group" "load_balancer" {
  name        = "${var.name}-lb"
  description = "recfleet API load balancer: HTTPS from API callers and bots"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "lb_from_callers" {
  for_each          = toset(var.api_allowed_cidrs)
  security_group_id = aws_security_group.load_balancer.id
  description       = "HTTPS from API callers"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "lb_from_bots" {
  security_group_id            = aws_security_group.load_balancer.id
  description                  = "The bots' WebSocket to the controller"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.bots.id
}

resource "aws_vpc_security_group_egress_rule" "lb_to_controller" {
  security_group_id            = aws_security_group.load_balancer.id
  description                  = "To the controller's API port"
  ip_protocol                  = "tcp"
  from_port                    = local.controller_api
  to_port                      = local.controller_api
  referenced_security_group_id = aws_security_group.controller.id
}

resource "aws_security_group" "controller" {
  name        = "${var.name}-controller"
  description = "recfleet controller: its API from the load balancer only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "controller_from_lb" {
  security_group_id            = aws_security_group.controller.id
  description                  = "The API and the bots' WebSocket, through the load balancer"
  ip_protocol                  = "tcp"
  from_port                    = local.controller_api
  to_port                      = local.controller_api
  referenced_security_group_id = aws_security_group.load_balancer.id
}

resource "aws_vpc_security_group_egress_rule" "controller_https" {
  security_group_id = aws_security_group.controller.id
  description       = "AWS APIs (ECS, S3, Secrets Manager) and webhook receivers, over HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "controller_database" {
  count                        = local.create_db ? 1 : 0
  security_group_id            = aws_security_group.controller.id
  description                  = "The state database"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.database[0].id
}

# An existing database (database_url): somewhere in the VPC, on database_port.
data "aws_vpc" "this" {
  id = var.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "controller_existing_database" {
  count             = local.create_db ? 0 : 1
  security_group_id = aws_security_group.controller.id
  description       = "The state database given as database_url, in the VPC"
  ip_protocol       = "tcp"
  from_port         = var.database_port
  to_port           = var.database_port
  cidr_ipv4         = data.aws_vpc.this.cidr_block
}

resource "aws_security_group" "bots" {
  name        = "${var.name}-bots"
  description = "recfleet bots: egress only (meetings, S3, the controller)"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_egress_rule" "bots_https" {
  security_group_id = aws_security_group.bots.id
  description       = "Meetings, S3 and the controller, over HTTPS"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "bots_media" {
  security_group_id = aws_security_group.bots.id
  description       = "Meetings' WebRTC media and TURN over UDP"
  ip_protocol       = "udp"
  from_port         = 1024
  to_port           = 65535
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "database" {
  count       = local.create_db ? 1 : 0
  name        = "${var.name}-database"
  description = "recfleet state database: PostgreSQL from the controller only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "database_from_controller" {
  count                        = local.create_db ? 1 : 0
  security_group_id            = aws_security_group.database[0].id
  description                  = "PostgreSQL from the controller"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.controller.id
}

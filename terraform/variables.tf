variable "name" {
  description = "Prefix of every resource's name, and the controller's pool name."
  type        = string
  default     = "recfleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name: 2-21 characters, lower-case letters, digits and '-', starting with a letter."
  }
}

variable "vpc_id" {
  description = "The VPC to deploy into."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (with a NAT route to the internet, for the meetings) for the bots, the controller and the database."
  type        = list(string)

  validation {
    condition     = can(var.private_subnet_ids[1])
    error_message = "private_subnet_ids: at least two subnets, in different availability zones."
  }
}

variable "load_balancer_subnet_ids" {
  description = "Subnets of the API's load balancer. Empty: the private subnets (an internal load balancer)."
  type        = list(string)
  default     = []
}

variable "internal_load_balancer" {
  description = "Whether the API's load balancer is internal (reachable inside the VPC only). The bots reach the controller through it; an internet-facing one sees them come from the NAT gateways' addresses, which api_allowed_cidrs must then include."
  type        = bool
  default     = true
}

variable "api_allowed_cidrs" {
  description = "Who may call the API: CIDR blocks let into the load balancer's HTTPS listener (the bots' subnets are let in on their own)."
  type        = list(string)
}

variable "domain_name" {
  description = "The API's host name (for example recordings.example.com): the certificate's name, the bots' wss:// address and the API URL."
  type        = string
}

variable "certificate_arn" {
  description = "An ACM certificate for domain_name, for the load balancer's HTTPS listener."
  type        = string
}

variable "route53_zone_id" {
  description = "A Route 53 hosted zone to create domain_name in, as an alias of the load balancer. Empty: point the name at the load balancer yourself (output load_balancer_dns_name)."
  type        = string
  default     = ""
}

variable "bucket_name" {
  description = "The S3 bucket the recordings are stored in (created by this module)."
  type        = string
}

variable "recordings_prefix" {
  description = "The key prefix of the recordings in the bucket."
  type        = string
  default     = "recordings"
}

variable "retention_days" {
  description = "Days recordings are kept in the bucket."
  type        = number
  default     = 365
}

variable "log_retention_days" {
  description = "Days the bots' and the controller's logs are kept in CloudWatch."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days: one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ...)."
  }
}

variable "capacity_mode" {
  description = "Where bots run: fargate, fargate_spot (Spot with an on-demand share, see fargate_spot_weight) or ec2 (an Auto Scaling group of the module's own)."
  type        = string
  default     = "fargate_spot"

  validation {
    condition     = contains(["fargate", "fargate_spot", "ec2"], var.capacity_mode)
    error_message = "capacity_mode: fargate, fargate_spot or ec2."
  }
}

variable "fargate_spot_weight" {
  description = "With fargate_spot: Spot tasks launched for each on-demand task."
  type        = number
  default     = 3
}

variable "pool_min_idle" {
  description = "Warm bots kept idle and connected at all times (a start from the warm pool takes under a second; a new Fargate task 30-90 s)."
  type        = number
  default     = 2
}

variable "pool_max" {
  description = "The most bots at once, idle and busy."
  type        = number
  default     = 50
}

variable "pool_idle_ttl_secs" {
  description = "How long an idle bot above the pool's target is kept before it is retired."
  type        = number
  default     = 300
}

variable "bot_image" {
  description = "The bot's image URI (container/Dockerfile.bot, pushed to a registry the tasks can pull from)."
  type        = string
}

variable "controller_image" {
  description = "The controller's image URI (container/Dockerfile.controller)."
  type        = string
}

variable "bot_cpu" {
  description = "The bot task's CPU units (1024 = one vCPU). A 720p30 recording used 0.67 cores (docs/BENCHMARKS.md); a meeting with many video tiles decodes more: measure yours."
  type        = number
  default     = 1024
}

variable "bot_memory_mb" {
  description = "The bot task's memory, MiB. A recording's processes held about 0.6 GB (PSS), 1.3 GB RSS."
  type        = number
  default     = 2048
}

variable "bot_ephemeral_storage_gib" {
  description = "Fargate ephemeral storage of a bot task, GiB (21-200): the spool that holds segments until they are uploaded. At most 2.9 Mb/s, 21 GiB holds 16 hours of video the bucket could not take."
  type        = number
  default     = 21
}

variable "controller_cpu" {
  description = "The controller task's CPU units."
  type        = number
  default     = 1024
}

variable "controller_memory_mb" {
  description = "The controller task's memory, MiB."
  type        = number
  default     = 2048
}

variable "ec2_instance_type" {
  description = "With capacity_mode ec2: the instances' type."
  type        = string
  default     = "c6i.2xlarge"
}

variable "ec2_ami_id" {
  description = "With capacity_mode ec2: an ECS-optimized AMI (for example from the SSM parameter /aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id)."
  type        = string
  default     = null
}

variable "ec2_max_instances" {
  description = "With capacity_mode ec2: the Auto Scaling group's maximum size."
  type        = number
  default     = 20
}

variable "ec2_target_capacity_percent" {
  description = "With capacity_mode ec2: managed scaling's target utilization; under 100 keeps headroom for a burst."
  type        = number
  default     = 80
}

variable "database_url" {
  description = "An existing PostgreSQL URL for the controller's state. Empty: the module creates an RDS PostgreSQL instance."
  type        = string
  default     = ""
  sensitive   = true
}

variable "database_port" {
  description = "With database_url: the port the controller reaches it on (in the VPC)."
  type        = number
  default     = 5432
}

variable "database_instance_class" {
  description = "The RDS instance class, when the module creates the database."
  type        = string
  default     = "db.t4g.medium"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

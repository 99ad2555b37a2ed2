output "api_url" {
  description = "The REST API's base URL (the API key is in the secret api_key_secret_arn)."
  value       = local.api_url
}

output "api_key_secret_arn" {
  description = "The Secrets Manager secret that holds the API key."
  value       = aws_secretsmanager_secret.controller["api-key"].arn
}

output "bucket" {
  description = "The recordings bucket."
  value       = aws_s3_bucket.recordings.bucket
}

output "cluster" {
  description = "The ECS cluster the bots and the controller run in."
  value       = aws_ecs_cluster.this.name
}

output "load_balancer_dns_name" {
  description = "Point domain_name at this when no route53_zone_id is given."
  value       = aws_lb.api.dns_name
}

output "bot_task_definition" {
  description = "The bot's task definition family."
  value       = aws_ecs_task_definition.bot.family
}

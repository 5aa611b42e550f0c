"""shardgate: a Restate-compatible durable invocation server (shared code for ingress and workers)."""

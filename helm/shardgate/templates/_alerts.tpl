{{/*
The shardgate alert rules (a list of Prometheus rule groups). Rendered into the PrometheusRule
and, with the default values, into deploy/prometheus/alerts.yaml (deploy/tools/render_alerts.py).
Every expression aggregates by (namespace, job), so one rule set serves several releases.
Alert text templates are escaped as {{` ... `}} so that Helm leaves them to Prometheus.
*/}}
{{- define "shardgate.alertGroups" -}}
- name: shardgate.ingress
  rules:
    - alert: ShardgateIngressErrorRate
      expr: |
        sum by (namespace, job) (rate(shardgate_ingress_requests_total{status=~"5.."}[5m]))
          / sum by (namespace, job) (rate(shardgate_ingress_requests_total[5m])) > 0.05
      for: 5m
      labels:
        severity: critical
      annotations:
        summary: {{`"More than 5% of ingress requests fail with 5xx ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{`"{{ $value | humanizePercentage }} of requests answered 5xx over 5 minutes. 503s mean partitions had no reachable owner within the routing deadline: check ShardgatePartitionsUnowned and Redis."`}}
    - alert: ShardgateIngressLatencyHigh
      expr: |
        histogram_quantile(0.99, sum by (namespace, job, le) (rate(shardgate_ingress_request_duration_seconds_bucket{route=~"send|output|lookup|awakeable"}[5m]))) > 1
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"p99 latency of non-waiting ingress requests above 1 s ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{`"p99 of send/output/lookup/awakeable requests is {{ $value | humanizeDuration }}. Calls and attaches wait for handlers and are excluded. Check Lua script latency (Redis) and worker CPU."`}}
    - alert: ShardgateIngressRpcErrors
      expr: |
        sum by (namespace, job) (rate(shardgate_ingress_partition_rpcs_total{result="error"}[5m])) > 1
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"Ingress RPCs to partition workers fail ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{`"{{ $value | humanize }} failed RPCs/s to workers for 10 minutes (reroutes excluded)."`}}
- name: shardgate.partition
  rules:
    - alert: ShardgatePartitionsUnowned
      expr: |
        sum by (namespace, job) (shardgate_partition_owned_partitions) < {{ .Values.partitions }}
      for: 1m
      labels:
        severity: critical
      annotations:
        summary: {{`"Some partitions have no owner ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{ printf "\"Workers own {{ $value }} of %v partitions for a minute: invocations of the others wait. Are workers crash-looping, or is Redis unreachable?\"" .Values.partitions }}
    - alert: ShardgateLeaseFlapping
      expr: |
        sum by (namespace, job) (rate(shardgate_partition_lease_changes_total{change="lost"}[10m])) * 600 > 5
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"Partition leases keep being lost ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{`"{{ $value | humanize }} leases lost in 10 minutes. Workers miss lease renewals: CPU starvation, Redis latency or a lease TTL too short for the heartbeat."`}}
    - alert: ShardgateWorkerSaturated
      expr: |
        max by (namespace, job, instance) (shardgate_partition_invocations_in_flight) >= {{ mulf 0.9 .Values.partition.config.maxConcurrentInvocations | int64 }}
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"A worker runs at its in-flight limit ({{ $labels.instance }})"`}}
        description: {{ printf "\"{{ $value }} attempts in flight (limit %v): new attempts wait for a slot. Add workers or raise partition.config.maxConcurrentInvocations.\"" .Values.partition.config.maxConcurrentInvocations }}
    - alert: ShardgateDeploymentErrors
      expr: |
        sum by (namespace, job) (rate(shardgate_partition_deployment_errors_total[5m]))
          / sum by (namespace, job) (rate(shardgate_partition_deployment_call_duration_seconds_count[5m])) > 0.1
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"More than 10% of attempts against deployments fail ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{`"{{ $value | humanizePercentage }} of attempts fail (transport, HTTP status or protocol errors); the invocations are retried with back-off. Check the deployments (your services)."`}}
    - alert: ShardgateLuaScriptSlow
      expr: |
        histogram_quantile(0.99, sum by (namespace, job, le) (rate(shardgate_partition_script_duration_seconds_bucket[5m]))) > 0.05
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"p99 of Redis Lua transitions above 50 ms ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{`"p99 is {{ $value | humanizeDuration }}. Redis is saturated (single CPU), swapping, or fsync is slow (appendfsync always on slow disks)."`}}
    - alert: ShardgateTimerLag
      expr: |
        histogram_quantile(0.99, sum by (namespace, job, le) (rate(shardgate_partition_timer_lag_seconds_bucket[5m]))) > 5
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"Timers fire more than 5 s late ({{ $labels.namespace }}/{{ $labels.job }})"`}}
        description: {{`"p99 timer lag is {{ $value | humanizeDuration }}: sleeps, delayed sends and retries run late."`}}
    - alert: ShardgateOutboxBacklog
      expr: |
        max by (namespace, job, partition) (shardgate_partition_outbox_depth) > 1000
      for: 10m
      labels:
        severity: warning
      annotations:
        summary: {{`"Outbox of partition {{ $labels.partition }} holds more than 1000 messages"`}}
        description: {{`"{{ $value }} cross-partition messages wait for delivery for 10 minutes; the owner of the target partitions may be unreachable."`}}
{{- end -}}

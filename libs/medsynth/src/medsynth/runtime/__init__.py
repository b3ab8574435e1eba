"""What every service process shares: HTTP plumbing (health, readiness, metrics, error mapping),
the worker service entry point and the Prometheus metrics."""

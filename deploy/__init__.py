"""How the flows run for real: Prefect deployments (nightly cron, on demand) served by one process."""

"""The team cluster's moving parts that need no orchestrator: a PostgreSQL in a folder (`postgres`),
background servers with pid files and health checks (`procs`), credentials from the environment or a
private file (`secrets`). `deploy/cluster.py` composes them into `make cluster`; docs/scale-out.md."""

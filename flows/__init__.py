"""Prefect flows: the order of the tasks and the pause for release approval, nothing else."""

"""Prefect flows. They orchestrate; the work happens in archivox.tasks."""

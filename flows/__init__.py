"""Prefect flows that chain FineScope's tasks."""

"""Prefect tasks: thin wrappers around ``finescope_core.stages`` (caching, retries, logging, artifacts)."""

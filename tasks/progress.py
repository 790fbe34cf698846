"""How far a stage is, in the Prefect UI: each long loop of a task run (the core's ``progress``) gets a progress
artifact, named after the task run and the loop, and updated as the loop advances."""

from __future__ import annotations

import logging
import threading
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from finescope_core import progress

logger = logging.getLogger(__name__)


class ProgressArtifacts:
    """A ``finescope_core.progress`` reporter: one Prefect progress artifact per (task run, loop). Outside a task run
    it does nothing; a failure to reach the API costs the run nothing but the picture."""

    def __init__(self) -> None:
        self.artifacts: dict[tuple[UUID, str], UUID] = {}
        self.lock = threading.Lock()  # task runs report from several threads

    def __call__(self, desc: str, done: int, total: int) -> None:
        context = TaskRunContext.get()
        if context is None:
            return
        key, percent = (context.task_run.id, desc), 100.0 * done / total
        try:
            with self.lock:
                artifact = self.artifacts.get(key)
            if artifact is None:
                artifact = create_progress_artifact(percent, description=f"{context.task_run.name}: {desc}")
                with self.lock:
                    self.artifacts[key] = artifact
            else:
                update_progress_artifact(artifact, percent)
            if done == total:
                with self.lock:
                    self.artifacts.pop(key, None)
        except Exception as exc:  # the UI's picture only: never fail a stage for it
            logger.warning("progress artifact for %s not updated: %s", desc, exc)


def show_progress_in_the_ui() -> None:
    """Install the reporter for every task run of this process."""
    progress.report_to(ProgressArtifacts())

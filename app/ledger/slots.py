"""A bound on the ledger exports one process streams at once: in all, and per project.

An export holds no database connection while its client reads (each batch is read in a short
transaction of its own), but it still reads the shared pool once per batch and keeps a task, a
queue of chunks and a socket busy for as long as its client takes. So a process streams at most
``limit`` exports, and at most ``per_project`` for one project; more are refused at once (429
``ledger_export_in_progress`` for the project, 503 ``ledger_exports_busy`` for the process),
before any query. No I/O: a counter per project, touched by one event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from app.ledger.exceptions import ExportInProgress, ExportsBusy


class ExportSlots:
    def __init__(self, *, limit: int, per_project: int) -> None:
        self.limit = limit
        self.per_project = per_project
        self.running = 0
        self._projects: dict[uuid.UUID, int] = {}

    def acquire(self, project_id: uuid.UUID) -> Callable[[], None]:
        """Take a slot for ``project_id``, or raise. Returns its release: call it once the
        export has ended, however it ended (further calls do nothing)."""
        mine = self._projects.get(project_id, 0)
        if mine >= self.per_project:
            raise ExportInProgress()
        if self.running >= self.limit:
            raise ExportsBusy()
        self.running += 1
        self._projects[project_id] = mine + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.running -= 1
            left = self._projects[project_id] - 1
            if left:
                self._projects[project_id] = left
            else:
                del self._projects[project_id]

        return release

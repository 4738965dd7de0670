"""The lease heartbeat: a thread that extends the job's lease while the render runs.

Each beat extends the lease only while the row still names this worker and attempt
(`repo.heartbeat`). When it does not, the lease is lost (the reaper gave the job to another
attempt after this worker went silent too long) and `lost` is set: the render stops without
writing anything more. A database that cannot be reached is not a lost lease: the beat is
tried again at the next interval, and the render goes on; if the outage outlasts the lease,
the first beat after it finds the lease gone.
"""

from __future__ import annotations

import logging
import threading
import uuid

from db import repository as repo
from db.database import Database

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        database: Database,
        job_id: uuid.UUID,
        worker_id: str,
        attempt: int,
        *,
        lease_s: float,
        interval_s: float,
    ):
        self.database = database
        self.job_id, self.worker_id, self.attempt = job_id, worker_id, attempt
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat:{job_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def beat(self) -> bool:
        """Extend the lease now. False if it is lost; raises if the database is unreachable."""
        with self.database.transaction() as s:
            held = repo.heartbeat(s, self.job_id, self.worker_id, self.attempt, self.lease_s)
        if not held:
            self.lost.set()
        return held

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.beat():
                    log.warning(
                        "job %s: lease of attempt %d is lost; stopping", self.job_id, self.attempt
                    )
                    return
            except Exception as exc:  # the database is down: keep rendering, beat again later
                log.warning("job %s: heartbeat failed (%s); will retry", self.job_id, exc)

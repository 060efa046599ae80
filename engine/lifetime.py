"""Worker processes that do not outlive their parent.

Why: a worker of a ``ProcessPoolExecutor`` blocks reading its call queue and exits only when the
parent says so. After a ``kill -9`` (or an OOM kill) of the parent nobody says so, and a file-
scoring worker was seen living on, re-parented to PID 1, for 12+ minutes with 244 MB resident.
When the parent dies the kernel re-parents its children (to init or the nearest subreaper), so
``os.getppid()`` changing is the death notice, however the parent died; polling it twice a second
costs nothing measurable. Used by the file-scoring workers and the server's body-parsing workers.

Not ``prctl(PR_SET_PDEATHSIG)``: it fires when the *thread* that spawned the child exits, and a
pool spawns workers from whichever thread submits (or from its manager thread), so a finished
submitting thread would kill healthy workers. ``os._exit``: no cleanup is owed (workers write
nothing), and a normal exit could block on queue feeder threads whose reader is gone.
"""

from __future__ import annotations

import os
import threading
import time

PARENT_POLL_S = 0.5
ORPHANED_EXIT_CODE = 75  # EX_TEMPFAIL: nobody reads it, but it tells a process listing why


def exit_with_parent(parent: int, poll_s: float = PARENT_POLL_S) -> None:
    """Start a daemon thread that ends this process within ``poll_s`` of ``parent``'s death.

    ``parent`` is passed in (the parent's ``os.getpid()``) rather than read here: a parent that
    dies while this worker is still importing would otherwise be remembered as "PID 1", and the
    worker would never notice.
    """

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(ORPHANED_EXIT_CODE)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="rerankrt-parent-watch", daemon=True).start()

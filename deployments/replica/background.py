"""Background work at a lower CPU priority: a long video's segments yield the CPU to interactive requests.

A replica prepares each request (the processor: frames resized, patches cut, tokens counted) in the caller's
thread before it is queued. For a background request (``priority > 0``) that thread is one of
:data:`BACKGROUND_THREADS`, each lowered to ``BACKGROUND_NICENESS`` when it starts (Linux schedules threads
one by one, so the replica's other threads keep their priority). The job runner's process and the segments'
decode tasks lower themselves the same way (:func:`lower_priority`). Lowering needs no privilege; nothing
ever raises a priority back.

Ray starts every worker (replicas, the ingress, tasks) at niceness 15 (``ps -o ni``), so background work goes
to 19, the lowest: Linux then gives it about 40% of the CPU time an interactive thread gets when both want it.
"""

import concurrent.futures
import logging
import os
import threading

logger = logging.getLogger(__name__)

BACKGROUND_NICENESS = 19
_BACKGROUND_WORKERS = 4


def lower_priority(niceness: int = BACKGROUND_NICENESS, *, thread: bool = False) -> None:
    """Lower this process (or, with ``thread``, this thread) to ``niceness``; a lower one is left as it is."""
    who = threading.get_native_id() if thread else 0
    try:
        current = os.getpriority(os.PRIO_PROCESS, who)
        if current < niceness:
            os.setpriority(os.PRIO_PROCESS, who, niceness)
    except OSError as error:  # not on Linux, or refused: the work runs at the usual priority
        logger.warning("Could not lower the CPU priority of background work: %s", error)


BACKGROUND_THREADS = concurrent.futures.ThreadPoolExecutor(
    max_workers=_BACKGROUND_WORKERS, thread_name_prefix="background", initializer=lambda: lower_priority(thread=True)
)

"""The CPU priority of Serve's processes.

Ray starts its worker processes (every Serve replica, the proxy, the controller) at niceness 15
(Ray's `worker_niceness`), below its own daemons (raylet, GCS, dashboard: 0) and below any
other process on the host. On a busy host the engine replica then loses its cores to the
daemons and to any client or sidecar, and its listeners hear gaps that no admission can
prevent. Serve processes of this application should run at the host's normal priority:
`RAY_worker_niceness=0` in the environment of `ray start` (the Makefile, the k8s pods and the
simulated cluster set it) makes Ray start every worker at 0.

`check_priority` is the belt to that: called first in each Serve process of the application,
it lowers the niceness of every thread of the process to 0 where the process may (root with
CAP_SYS_NICE; a container usually may not), and otherwise logs a warning naming the setting. A
`RAY_worker_niceness` set in the environment is the operator's choice, and kept.
"""

from __future__ import annotations

import logging
import os

TARGET_NICENESS = 0


def niceness() -> int:
    """This thread's niceness (Linux: niceness is per thread; threads inherit it at creation)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def check_priority(log: logging.Logger, target: int = TARGET_NICENESS) -> int:
    """Bring every thread of this process to niceness `target` if it runs above it (nicer);
    returns the niceness this thread ends at."""
    now = niceness()
    if now <= target or "RAY_worker_niceness" in os.environ:
        return now
    try:
        for tid in os.listdir("/proc/self/task"):
            os.setpriority(os.PRIO_PROCESS, int(tid), target)
    except (OSError, ValueError) as e:
        log.warning("this process runs at niceness %d, below the host's daemons (%s); start Ray with "
                    "RAY_worker_niceness=%d in its environment", now, e, target)
        return niceness()
    log.info("niceness %d -> %d", now, target)
    return niceness()

"""Whether the process that wrote a record (run.json, a job-log claim) is still running.

A pid alone cannot tell: pids are reused, and containers restart with small ones, so a dead
run would look alive. A record therefore keeps the process's :func:`process_start` too.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """What tells process ``pid`` from a later one given the same pid: boot id and start time.

    Read from Linux's ``/proc``; None where it cannot be read (another OS, no such process) or
    the process has ended.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the name may hold spaces; fields 3.. follow it
    if len(fields) <= 19 or fields[0] == "Z":  # a zombie has ended, only not been waited for
        return None
    return f"{boot}:{fields[19]}"  # field 22: the start time


def pid_alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is still the process whose :func:`process_start` was ``start``.

    With ``start`` None (recorded where ``/proc`` could not tell) the pid alone decides.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    except (OverflowError, ValueError):
        return False
    if start is None:
        return True
    return process_start(pid) == start  # None once it has ended (a zombie included)

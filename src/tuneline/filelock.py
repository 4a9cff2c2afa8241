"""One exclusive `fcntl.flock`, polled until a deadline: the registry's alias lock and the workspace run
lock both take theirs this way. A flock belongs to the open file description, so it is released when
the process ends however it ends (no stale locks), and two threads that each open the file exclude
each other too."""

from __future__ import annotations

import fcntl
import time
from typing import IO


def acquire(handle: IO, timeout_s: float) -> bool:
    """Take the exclusive lock on the open file `handle`, retrying until `timeout_s` has passed.

    Returns:
        True once held; False when another holder kept it past the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(1.0, max(0.05, left)))


def release(handle: IO) -> None:
    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

"""An exclusive lock on a run's `training.output_dir`, held for the run's whole lifetime.

`output_dir/.hftransfer.lock` is locked with `fcntl.flock` by the main process (rank 0) of a run; the other ranks of
an `accelerate launch` / torchrun job share the run and do not take it. A second run into the same folder fails at
once, naming the folder and the holder (pid, host, start time, written into the lock file), and changes nothing. The
kernel drops the lock when its process ends, however it ends: a run killed with SIGKILL leaves a lock file, but no
lock, so `--resume` proceeds. The file stays in place after a run (removing it would race with a starting run); it
records the last holder.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

from ..constants import RUN_LOCK_FILE
from ..errors import RunLockedError

LOCK_FILE = RUN_LOCK_FILE

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; runs are not protected from each other
    fcntl = None


class RunLock:
    """`with RunLock(output_dir):` -- the run owns `output_dir` inside the block.

    Raises:
        [`RunLockedError`] when another live process holds the lock (the message names the folder and the holder).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None or self._fd is not None:
            return self
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: a run that fails to get the lock must not touch the holder's record.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.output_dir} is in use by another training run ({holder}); wait for it to end or choose another "
                "training.output_dir. Nothing was changed."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {record['pid']} on {record['host']}, started {record['started']}; lock file {LOCK_FILE}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"holder unknown; lock file {LOCK_FILE}"


__all__ = ["LOCK_FILE", "RunLock"]

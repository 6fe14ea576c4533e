"""Who is who in a (possibly) multi-process run, and the few collectives staged training needs.

Not accelerate's `PartialState`: every `TrainingArguments` resets and rebuilds that shared state, so a reference held
across stages cannot be trusted. Everything here also works in a single process (no process group), where it is a
no-op or returns the one local value.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch.distributed as dist


class Ranks:
    """The rank and world size of this process, from torch.distributed (or the launcher's environment)."""

    @staticmethod
    def _initialized() -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def rank(self) -> int:
        return dist.get_rank() if self._initialized() else int(os.environ.get("RANK", "0"))

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if self._initialized() else int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self._initialized():
            dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """`value` of every rank, in rank order (picklable values; `[value]` in a single process)."""
        if not self._initialized():
            return [value]
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered

    @contextlib.contextmanager
    def main_process_first(self):
        """The main process runs the block first (e.g. writes a file); the others then run it (and read it)."""
        if not self.is_main_process:
            self.barrier()
        yield
        if self.is_main_process:
            self.barrier()


__all__ = ["Ranks"]

"""Gathering evaluators' per-image results from all processes (one helper for the evaluators)."""
from __future__ import annotations

import itertools
from typing import List, Optional

from detectron2.utils import comm

__all__ = ["gather_on_main"]


def gather_on_main(items: List, distributed: bool) -> Optional[List]:
    """All processes' ``items`` concatenated in rank order on the main process, ``None`` on the
    others; ``items`` itself when not ``distributed``. Every process must call it (it
    synchronizes)."""
    if not distributed:
        return items
    comm.synchronize()
    gathered = list(itertools.chain(*comm.gather(items, dst=0)))
    return gathered if comm.is_main_process() else None

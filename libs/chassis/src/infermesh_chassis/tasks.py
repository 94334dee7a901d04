"""Background tasks: the one way a service stops a loop it started."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, recancel_s: float = 1.0) -> None:
    """Cancel ``task`` and wait until it has finished (nothing for None or a task already done).

    A task can swallow one cancellation (a library that turns CancelledError into its own error, or
    ``asyncio.timeout`` expiring in the same step) and go back to waiting; it is cancelled again every
    ``recancel_s`` until it ends, so stopping never hangs on it.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_s)
    if not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()

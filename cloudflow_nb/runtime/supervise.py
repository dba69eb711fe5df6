"""Background tasks with an owner: errors are logged and counted, and loops go on.

Every long-lived task of a deployment (watching workers, autoscaling, renewing leases, probing
health) runs under a :class:`Supervisor`. A round that raises is logged with its traceback,
counted under the task's name and remembered as the last error; the loop then waits for its next
round. Nothing a background task does can end it silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Supervisor"]

logger = logging.getLogger("cloudflow_nb")


class Supervisor:
    """Owns background tasks: runs periodic loops and one-off jobs, and keeps their errors.

    Parameters
    ----------
    owner : str
        Who the tasks work for (a deployment's name), used in log lines.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.errors: Counter[str] = Counter()
        self.last_error: str | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: set[asyncio.Task[Any]] = set()

    def loop(
        self,
        name: str,
        round_: Callable[[], Awaitable[Any]],
        interval: float | Callable[[], float],
        wake: asyncio.Event | None = None,
    ) -> None:
        """Run ``round_()`` every ``interval`` seconds (sooner when ``wake`` is set) until
        :meth:`stop` or :meth:`close`; a loop of the same name is replaced."""
        self.stop(name)
        self._tasks[name] = asyncio.ensure_future(self._run(name, round_, interval, wake))

    def spawn(self, name: str, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run a one-off job; its error, if any, is logged and counted like a loop's."""
        task = asyncio.ensure_future(coro)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        task.add_done_callback(lambda t: self._job_done(name, t))
        return task

    def running(self, name: str) -> bool:
        """Whether the loop ``name`` is running."""
        task = self._tasks.get(name)
        return task is not None and not task.done()

    def stop(self, name: str) -> None:
        """Stop the loop ``name`` (if any)."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Stop every loop and job, and wait until they have ended."""
        tasks = [*self._tasks.values(), *self._jobs]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def summary(self) -> dict[str, Any]:
        """Error counts per task and the last error, for ``dep.stats()``."""
        return {"errors": dict(self.errors), "last_error": self.last_error}

    async def _run(
        self,
        name: str,
        round_: Callable[[], Awaitable[Any]],
        interval: float | Callable[[], float],
        wake: asyncio.Event | None,
    ) -> None:
        while True:
            seconds = interval() if callable(interval) else interval
            if wake is None:
                await asyncio.sleep(seconds)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), seconds)
                wake.clear()
            try:
                await round_()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._record(name, exc)

    def _job_done(self, name: str, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._record(name, task.exception())  # type: ignore[arg-type]

    def _record(self, name: str, exc: BaseException) -> None:
        self.errors[name] += 1
        self.last_error = f"{name}: {type(exc).__name__}: {exc}"
        logger.warning("%s: background task %r failed (it goes on)", self.owner, name, exc_info=exc)

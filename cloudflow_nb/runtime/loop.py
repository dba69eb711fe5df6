"""The client side's own event-loop thread and connection pool.

Routers and the store talk to workers and the scheduler from this loop, never through the Dask
client's loop, so a deployment works the same with any client. Blocking callers hand it
coroutines with :meth:`LoopThread.run` (wait) or :meth:`LoopThread.submit` (a future).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from distributed.core import ConnectionPool

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.runtime.fastpath import close_fast_pool

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """An asyncio loop on a daemon thread, with a Dask ``ConnectionPool`` living on it (and the
    :class:`~cloudflow_nb.runtime.fastpath.FastPool` beside it, closed with it).

    Parameters
    ----------
    connection_args : dict, optional
        The client's ``connection_args`` (TLS settings and the like).
    name : str
        The thread's name.
    closed_message : str
        The ``DeploymentError`` raised by work handed to it after :meth:`close`.
    """

    def __init__(
        self,
        connection_args: dict[str, Any] | None = None,
        name: str = "cloudflow-router",
        closed_message: str = "the cluster is closed",
    ) -> None:
        self.closed_message = closed_message
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self.pool: ConnectionPool = self.run(self._start_pool(connection_args or {}), timeout=30)

    @staticmethod
    async def _start_pool(connection_args: dict[str, Any]) -> ConnectionPool:
        pool = ConnectionPool(connection_args=connection_args, timeout=10)
        await pool.start()
        return pool

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; a thread-safe future of its result (``DeploymentError``
        once the loop is closed)."""
        if not self.closed:
            try:
                return asyncio.run_coroutine_threadsafe(coro, self.loop)
            except RuntimeError:  # the loop closed just now
                if not self.loop.is_closed():
                    raise
        coro.close()  # never scheduled: no "never awaited" warning
        raise DeploymentError(self.closed_message)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait at most ``timeout`` seconds for its result."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _close_pools(self) -> None:
        close_fast_pool(self.pool)
        await self.pool.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return not self._thread.is_alive()

    def close(self) -> None:
        """Close the pools, stop the loop and join the thread (idempotent)."""
        if self.closed:
            return
        try:
            self.run(self._close_pools(), timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self.loop.close()

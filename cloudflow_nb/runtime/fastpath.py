"""A lean request transport for the data plane: pickled frames over one TCP connection per worker.

Dask comms stay the control plane (deploy, store, placement, failure detection). The per-request
calls (``cf_call``, ``cf_cancel``, ``cf_release``) take this shorter path: each worker serves the
same handlers on a plain asyncio server on its own event loop (:class:`FastServer`), and a
process talking to workers keeps one persistent, pipelined connection per worker
(:class:`FastPool`). A frame is a header (payload length, request id) and a pickle (protocol 5)
of ``(op, kwargs)`` or ``(ok, value)``; values wrapped in Dask's ``to_serialize`` travel through
Dask's own pickler, so what arrives is what the Dask comm path would deliver.

Like Dask's default ``tcp://`` comms the transport is plain TCP: it is only used between ``tcp://``
addresses, and a cluster on ``tls://`` (or any other scheme) keeps every call on Dask comms. When
a worker's fast port is unknown or cannot be reached, the call goes over Dask comms instead,
so correctness never depends on this module; a connection lost mid-call fails that call with an
``OSError``, exactly like a broken Dask comm. Worker-to-worker fetches of kept outputs stay on Dask
comms: they carry tables over ``INLINE_LIMIT``, where Dask's out-of-band buffers beat a pickle copy.

Security: whoever can reach the port can make the worker unpickle data, which is the trust Dask's
own ``tcp://`` comms already ask for; the server binds to the worker's own host only.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import pickle
import struct
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from distributed.comm.addressing import parse_host_port
from distributed.protocol import pickle as dask_pickle
from distributed.protocol.serialize import Serialize

if TYPE_CHECKING:
    from distributed.core import ConnectionPool

__all__ = ["FastConnection", "FastPool", "FastServer", "FrameReader", "encode_frame", "fast_pool"]

HEADER = struct.Struct("!QQ")  # payload length, request id
RETRY_AFTER = 5.0  # seconds before a worker whose fast port failed is tried again
_POOLS: weakref.WeakKeyDictionary[Any, FastPool] = weakref.WeakKeyDictionary()


def _unwrap(obj: Serialize) -> tuple[Callable[[bytes], Any], tuple[bytes]]:
    return dask_pickle.loads, (dask_pickle.dumps(obj.data, protocol=5),)


class _Pickler(pickle.Pickler):
    dispatch_table = {Serialize: _unwrap}


def encode_frame(rid: int, obj: Any) -> memoryview:
    """One frame: ``obj`` pickled (``to_serialize`` contents through Dask's pickler), with its id."""
    buf = io.BytesIO()
    buf.write(bytes(HEADER.size))
    _Pickler(buf, protocol=5).dump(obj)
    frame = buf.getbuffer()
    HEADER.pack_into(frame, 0, len(frame) - HEADER.size, rid)
    return frame


class FrameReader:
    """Splits a byte stream into frames, however the stream was cut (a frame split across reads
    is filled into one buffer of its size: large frames cost one copy)."""

    def __init__(self) -> None:
        self._head = b""  # the start of a frame whose header is not complete yet
        self._frame: bytearray | None = None  # a frame being filled, header included
        self._filled = 0

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        """Add received bytes; the ``(request id, payload)`` of every frame now complete."""
        if self._head:
            data, self._head = self._head + data, b""
        view = memoryview(data)
        frames: list[tuple[int, memoryview]] = []
        pos = 0
        if self._frame is not None:
            pos = min(len(data), len(self._frame) - self._filled)
            self._frame[self._filled : self._filled + pos] = view[:pos]
            self._filled += pos
            if self._filled < len(self._frame):
                return frames
            frame, self._frame = self._frame, None
            frames.append((HEADER.unpack_from(frame)[1], memoryview(frame)[HEADER.size :]))
        while len(data) - pos >= HEADER.size:
            size, rid = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + size
            if end > len(data):
                self._frame = bytearray(HEADER.size + size)
                self._filled = len(data) - pos
                self._frame[: self._filled] = view[pos:]
                return frames
            frames.append((rid, view[pos + HEADER.size : end]))
            pos = end
        self._head = bytes(view[pos:])
        return frames


def _portable(exc: BaseException) -> BaseException:
    """``exc`` when it survives pickling, else a ``RuntimeError`` with its text."""
    try:
        pickle.loads(dask_pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# -- the worker side ------------------------------------------------------------------------------


class FastServer:
    """Serves ``handlers`` (name -> function or coroutine function) on ``host``, port 0.

    Parameters
    ----------
    handlers : Mapping
        The operations a client may call, by name.
    host : str
        The interface to listen on (the worker's own host).
    """

    def __init__(self, handlers: Mapping[str, Callable[..., Any]], host: str) -> None:
        self.handlers = handlers
        self.host = host
        self.port: int | None = None
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()

    async def start(self) -> int:
        """Listen (once) and return the port."""
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _ServerConnection(self), self.host, 0)
            self.port = self._server.sockets[0].getsockname()[1]
        assert self.port is not None
        return self.port

    def close(self) -> None:
        """Stop listening and drop every connection (their running calls are cancelled); a later
        :meth:`start` listens again, on a new port."""
        if self._server is not None:
            self._server.close()
            self._server = self.port = None
        for conn in list(self._connections):
            conn.close()


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._reader = FrameReader()
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        for rid, payload in self._reader.feed(data):
            self.server.requests += 1
            task = asyncio.ensure_future(self._serve(rid, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, rid: int, payload: memoryview) -> None:
        try:
            op, kwargs = pickle.loads(payload)
            handler = self.server.handlers[op]
            result = handler(**kwargs)
            if inspect.isawaitable(result):
                result = await result
            frame = encode_frame(rid, (True, result))
        except Exception as exc:  # the caller gets it raised, as with a Dask comm handler
            frame = encode_frame(rid, (False, Serialize(_portable(exc))))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        self.server._connections.discard(self)
        for task in self._tasks:
            task.cancel()
        if self.transport is not None:
            self.transport.close()


# -- the calling side -----------------------------------------------------------------------------


class FastConnection(asyncio.Protocol):
    """One client connection: requests are pipelined and matched to replies by request id."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = FrameReader()
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def request(self, op: str, kwargs: dict[str, Any]) -> Any:
        """Call ``op(**kwargs)`` on the worker; ``ConnectionResetError`` when the connection drops."""
        if self.closed or self.transport is None:
            raise ConnectionResetError("fast connection closed")
        self._next += 1
        rid = self._next
        frame = encode_frame(rid, (op, kwargs))  # an unpicklable argument raises here, as on Dask comms
        future = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            self.transport.write(frame)
            return await future
        finally:
            self._waiting.pop(rid, None)

    def data_received(self, data: bytes) -> None:
        for rid, payload in self._reader.feed(data):
            future = self._waiting.pop(rid, None)
            if future is None or future.done():
                continue  # its caller gave up (deadline, race lost)
            try:
                ok, value = pickle.loads(payload)
            except Exception as exc:
                future.set_exception(exc)
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionResetError(f"fast connection lost: {exc}"))

    def close(self) -> None:
        """Close the connection; calls still waiting fail with ``ConnectionResetError``."""
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(None)


class FastPool:
    """Fast connections to workers, beside the Dask ``ConnectionPool`` that stays the fallback.

    A worker's fast port is asked once over Dask comms (``cf_fast``); a worker that has none,
    does not answer, or is not on ``tcp://`` is called over Dask comms (tried again after
    :data:`RETRY_AFTER` seconds).

    Parameters
    ----------
    pool : ConnectionPool
        The Dask connection pool of this process's loop.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.calls = 0  # calls answered over fast connections
        self.fallbacks = 0  # calls that went over Dask comms instead
        self.bulky = 0  # calls sent over Dask comms for their size
        self._connections: dict[str, FastConnection] = {}
        self._connecting: dict[str, asyncio.Task[FastConnection | None]] = {}
        self._failed: dict[str, float] = {}
        self._closed = False

    async def call(self, worker: str, op: str, bulky: bool = False, **kwargs: Any) -> Any:
        """``op(**kwargs)`` on ``worker``: over its fast connection when there is one, else over
        Dask comms. ``bulky`` calls (megabytes of arrays) take Dask comms, whose out-of-band
        buffers skip the copies a pickled frame makes. A connection lost mid-call raises
        ``ConnectionResetError`` (an ``OSError``, like a broken Dask comm); the next call
        reconnects."""
        if bulky:
            self.bulky += 1
            return await getattr(self.pool(worker), op)(**kwargs)
        conn = self._connections.get(worker)
        if conn is None or conn.closed:
            conn = await self._connect(worker)
        if conn is None:
            self.fallbacks += 1
            return await getattr(self.pool(worker), op)(**kwargs)
        try:
            reply = await conn.request(op, kwargs)
        except ConnectionError:
            if self._connections.get(worker) is conn:
                del self._connections[worker]
            raise
        self.calls += 1
        return reply

    async def _connect(self, worker: str) -> FastConnection | None:
        loop = asyncio.get_running_loop()
        if not worker.startswith("tcp://") or loop.time() - self._failed.get(worker, -RETRY_AFTER) < RETRY_AFTER:
            return None
        task = self._connecting.get(worker)
        if task is None:
            task = self._connecting[worker] = asyncio.ensure_future(self._open(worker))
            task.add_done_callback(lambda t: self._opened(worker, t))
        return await asyncio.shield(task)

    def _opened(self, worker: str, task: asyncio.Task[FastConnection | None]) -> None:
        del self._connecting[worker]
        if not task.cancelled() and task.exception() is None and self._closed:
            self.drop(worker)  # it connected while the pool was closing

    async def _open(self, worker: str) -> FastConnection | None:
        loop = asyncio.get_running_loop()
        try:
            port = await self.pool(worker).cf_fast()
        except OSError:  # the worker is unreachable over Dask comms too: the caller must know
            raise
        except Exception:  # a worker without the handler: Dask comms carry its calls
            port = None
        try:
            if port is None:
                raise OSError("no fast port")
            host, _ = parse_host_port(worker.removeprefix("tcp://"))
            _, conn = await loop.create_connection(FastConnection, host, port)
        except OSError:  # no fast path to this worker for now: Dask comms carry its calls
            self._failed[worker] = loop.time()
            return None
        self._failed.pop(worker, None)
        self._connections[worker] = conn
        return conn

    def drop(self, worker: str) -> None:
        """Close the fast connection to ``worker`` (its next call reconnects)."""
        conn = self._connections.pop(worker, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every connection (run on the pool's loop)."""
        self._closed = True
        for task in self._connecting.values():
            task.cancel()
        for worker in list(self._connections):
            self.drop(worker)


def fast_pool(pool: ConnectionPool) -> FastPool:
    """The :class:`FastPool` beside a Dask ``ConnectionPool`` (made on first use)."""
    fast = _POOLS.get(pool)
    if fast is None:
        fast = _POOLS[pool] = FastPool(pool)
    return fast


def close_fast_pool(pool: ConnectionPool) -> None:
    """Close the :class:`FastPool` beside ``pool``, if one was made."""
    fast = _POOLS.pop(pool, None)
    if fast is not None:
        fast.close()

"""A lean request transport for the data plane: pickled frames over one connection per worker.

Dask comms stay the control plane (deploy, store, placement, failure detection). The per-request
calls (``cf_call``, ``cf_cancel``, ``cf_release``) take this shorter path: each worker serves the
same handlers on a plain asyncio server on its own event loop (:class:`FastServer`), and a
process talking to workers keeps one persistent, pipelined connection per worker
(:class:`FastPool`). A frame (:mod:`~cloudflow_nb.runtime.frames`) is a header (payload length,
request id), a pickle (protocol 5) of ``(op, kwargs)`` or ``(ok, value)`` and the large buffers of
its arrays and tensors beside it, written from their own memory and read into one buffer per
frame; values wrapped in Dask's ``to_serialize`` travel through Dask's own pickler, so what
arrives is what the Dask comm path would deliver.

The transport runs between ``tcp://`` addresses, and between ``tls://`` ones over TLS with the SSL
contexts of the cluster's Dask ``Security`` (the worker's listen context, the caller's connection
context); other schemes keep every call on Dask comms. When a worker's fast port is unknown or
cannot be reached, the call goes over Dask comms instead, so correctness never depends on this
module; a connection lost mid-call fails that call with an ``OSError``, exactly like a broken
Dask comm. Worker-to-worker fetches of kept outputs stay on Dask comms (tables over
``INLINE_LIMIT``, their arrays in Dask's own out-of-band frames).

Security: each worker's server holds a random 32-byte secret of its own, handed out only over
Dask comms (``cf_fast``, with the port: the trust Dask already asks, since whoever can call a
worker over Dask comms can run code there). One secret per worker rather than per cluster: a
leaked secret opens one worker, and workers that join later, or callers that attach later from
other processes, need nothing from the scheduler. A new connection must first complete the handshake of
:mod:`~cloudflow_nb.runtime.auth` (nonces from both ends, HMAC-SHA256 bound to each role), in
fixed-size messages and within ``handshake-timeout``; until then nothing is read as a frame and
nothing is unpickled, on either side, and a wrong byte, a wrong MAC or a late answer closes the
connection. A frame header claiming more than ``max-frame`` bytes closes the connection before
any buffer is made; a request or reply over the cap goes over Dask comms instead. After the
handshake the per-call path carries no cryptography of its own (TLS clusters encrypt every byte).

Configuration (``dask.config``, so also ``DASK_CLOUDFLOW__FASTPATH__PORT`` and the like), read
when a server starts or a pool is made:

- ``cloudflow.fastpath.host``: the interface to listen on (default: the worker's own host);
- ``cloudflow.fastpath.port``: a port, a range ``"9000:9100"`` (the first free one), or 0 (any);
- ``cloudflow.fastpath.max-frame``: the largest frame accepted (default ``"256MiB"``);
- ``cloudflow.fastpath.handshake-timeout``: how long a new connection may take to prove itself
  (default ``"10s"``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import pickle
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import TYPE_CHECKING, Any

import dask
from dask.utils import parse_bytes, parse_timedelta
from distributed.comm.addressing import get_address_host
from distributed.protocol import pickle as dask_pickle
from distributed.protocol.serialize import Serialize
from distributed.utils import parse_ports

from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.runtime.auth import AuthError, ClientHandshake, ServerHandshake, new_secret
from cloudflow_nb.runtime.comm import worker_gone
from cloudflow_nb.runtime.frames import (
    Frame,
    FrameError,
    FrameReader,
    FrameTooLarge,
    encode_frame,
    frame_size,
    write_frame,
)

if TYPE_CHECKING:
    from distributed.core import ConnectionPool

__all__ = [
    "FastConnection",
    "FastPool",
    "FastServer",
    "FastSettings",
    "fast_pool",
    "open_connection",
]

logger = logging.getLogger(__name__)

RETRY_AFTER = 5.0  # seconds before a worker whose fast port failed is tried again
MAX_PENDING = 128  # connections a server lets sit in the handshake at once
HANDSHAKE_READ = 256  # bytes read at once during the handshake (its messages are shorter)
_POOLS: weakref.WeakKeyDictionary[Any, FastPool] = weakref.WeakKeyDictionary()

# ``cloudflow.fastpath.*`` in dask.config, and the value of each when it is not set
DEFAULTS: dict[str, Any] = {"host": None, "port": 0, "max-frame": "256MiB", "handshake-timeout": "10s"}


@dataclass(frozen=True)
class FastSettings:
    """Where a fast server listens and what either end accepts.

    Attributes
    ----------
    host : str or None
        The interface to listen on; ``None``: the worker's own host.
    ports : tuple of int
        Ports to try in order (0: any free port).
    max_frame : int
        The largest frame payload accepted or sent, in bytes.
    handshake_timeout : float
        Seconds a new connection has to complete the handshake.
    """

    host: str | None = None
    ports: tuple[int, ...] = (0,)
    max_frame: int = 256 * 2**20
    handshake_timeout: float = 10.0

    @classmethod
    def from_config(cls) -> FastSettings:
        """The settings under ``cloudflow.fastpath`` in ``dask.config``."""
        return parse_settings({key: dask.config.get(f"cloudflow.fastpath.{key}", d) for key, d in DEFAULTS.items()})


def parse_settings(config: Mapping[str, Any]) -> FastSettings:
    """:class:`FastSettings` from a ``cloudflow.fastpath`` mapping; ``DeploymentError`` naming a bad key.

    Examples
    --------
    >>> parse_settings({"port": "9000:9002", "max-frame": "1MiB"})
    FastSettings(host=None, ports=(9000, 9001, 9002), max_frame=1048576, handshake_timeout=10.0)
    """
    config = {**DEFAULTS, **config}
    host, port = config["host"], config["port"]
    try:
        ports = tuple(p or 0 for p in parse_ports(port))
    except (TypeError, ValueError):
        ports = ()
    if not ports or not all(0 <= p < 65536 for p in ports):
        raise DeploymentError(
            f"cloudflow.fastpath.port: {port!r} is not a port (must be a number, a range 'low:high', or 0)"
        )
    if host is not None and not isinstance(host, str):
        raise DeploymentError(f"cloudflow.fastpath.host: {host!r} is not a host name or address")
    return FastSettings(
        host or None,
        ports,
        _positive("max-frame", config["max-frame"], parse_bytes, "a size such as '256MiB'"),
        float(_positive("handshake-timeout", config["handshake-timeout"], parse_timedelta, "a duration")),
    )


def _positive(key: str, value: Any, parse: Callable[[Any], Any], form: str) -> Any:
    try:
        parsed = parse(value)
    except (TypeError, ValueError, KeyError):
        parsed = None
    if parsed is None or parsed <= 0:
        raise DeploymentError(f"cloudflow.fastpath.{key}: {value!r} is not {form} above zero")
    return parsed


def _portable(exc: BaseException) -> BaseException:
    """``exc`` when it survives pickling, else a ``RuntimeError`` with its text."""
    try:
        pickle.loads(dask_pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


# -- the worker side ------------------------------------------------------------------------------


class FastServer:
    """Serves ``handlers`` (name -> function or coroutine function) to clients that prove they hold
    :attr:`key`.

    Parameters
    ----------
    handlers : Mapping
        The operations a client may call, by name.
    host : str
        The interface to listen on when ``settings.host`` names none (the worker's own host).
    ssl : ssl.SSLContext, optional
        The server-side TLS context (a TLS cluster's ``Security.get_listen_args("worker")``).
    settings : FastSettings, optional
        Default: :meth:`FastSettings.from_config`.
    """

    def __init__(
        self,
        handlers: Mapping[str, Callable[..., Any]],
        host: str,
        ssl: SSLContext | None = None,
        settings: FastSettings | None = None,
    ) -> None:
        self.handlers = handlers
        self.settings = settings or FastSettings.from_config()
        self.host = self.settings.host or host
        self.ssl = ssl
        self.key = new_secret()
        self.port: int | None = None
        self.requests = 0
        self.refused = 0  # connections closed for a failed or late handshake or an oversized frame
        self._server: asyncio.Server | None = None
        self._connections: set[_ServerConnection] = set()
        self._pending = 0  # connections still in the handshake

    async def start(self) -> int:
        """Listen (once), on the first free configured port, and return the port."""
        if self._server is None:
            self._server = await self._listen()
            self.port = self._server.sockets[0].getsockname()[1]
        assert self.port is not None
        return self.port

    async def _listen(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        timeout = self.settings.handshake_timeout if self.ssl else None
        error: OSError | None = None
        for port in self.settings.ports:
            try:
                return await loop.create_server(
                    lambda: _ServerConnection(self), self.host, port, ssl=self.ssl, ssl_handshake_timeout=timeout
                )
            except OSError as exc:  # in use: try the next one
                error = exc
        raise OSError(f"fast path: no free port on {self.host!r} among {self.settings.ports}") from error

    def close(self) -> None:
        """Stop listening and drop every connection (their running calls are cancelled); a later
        :meth:`start` listens again (on a new port when the configuration allows any)."""
        if self._server is not None:
            self._server.close()
            self._server = self.port = None
        for conn in list(self._connections):
            conn.close()


class _Framed(asyncio.BufferedProtocol):
    """Reads into the handshake's small buffer until the handshake is over, then into the
    :class:`~cloudflow_nb.runtime.frames.FrameReader`'s buffers (large frames in place)."""

    _auth: ServerHandshake | ClientHandshake | None  # None once the handshake is over

    def __init__(self, max_frame: int) -> None:
        self._greeting = bytearray(HANDSHAKE_READ)
        self._reader = FrameReader(max_frame)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._auth is not None:
            return memoryview(self._greeting)
        return self._reader.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self._auth is not None:
            self.handshake(bytes(self._greeting[:nbytes]))
            return
        try:
            frames = self._reader.buffer_updated(nbytes)
        except (FrameTooLarge, FrameError) as exc:
            self.bad_frame(exc)
            return
        for frame in frames:
            self.received(frame)

    def handshake(self, data: bytes) -> None:
        raise NotImplementedError

    def received(self, frame: Frame) -> None:
        raise NotImplementedError

    def bad_frame(self, exc: ValueError) -> None:
        raise NotImplementedError


class _ServerConnection(_Framed):
    def __init__(self, server: FastServer) -> None:
        super().__init__(server.settings.max_frame)
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._auth: ServerHandshake | None = ServerHandshake(server.key)  # None once the client proved itself
        self._timer: asyncio.TimerHandle | None = None  # the handshake's deadline, while it runs
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        assert self._auth is not None
        server = self.server
        server._connections.add(self)
        if server._pending >= MAX_PENDING:
            self._refuse("too many connections in the handshake")
            return
        server._pending += 1
        self._timer = asyncio.get_running_loop().call_later(
            server.settings.handshake_timeout, self._refuse, "no handshake in time"
        )
        self.transport.write(self._auth.hello)

    def received(self, frame: Frame) -> None:
        self.server.requests += 1
        task = asyncio.ensure_future(self._serve(frame))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def bad_frame(self, exc: ValueError) -> None:
        self._refuse(str(exc))

    def handshake(self, data: bytes) -> None:
        auth = self._auth
        if self._timer is None or auth is None:
            return  # refused already
        try:
            proof = auth.feed(data)
        except AuthError as exc:
            self._refuse(str(exc))
            return
        if auth.done and self.transport is not None:
            self._end_handshake()
            self._auth = None
            self.transport.write(proof)

    def _end_handshake(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.server._pending -= 1

    def _refuse(self, reason: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        logger.warning("fast path: closed the connection from %s: %s", peer, reason)
        self.server.refused += 1
        self.close()

    async def _serve(self, request: Frame) -> None:
        rid = request.rid
        try:
            op, kwargs = request.load()
            handler = self.server.handlers[op]
            result = handler(**kwargs)
            if inspect.isawaitable(result):
                result = await result
            frame = encode_frame(rid, (True, result))
        except Exception as exc:  # the caller gets it raised, as with a Dask comm handler
            frame = encode_frame(rid, (False, Serialize(_portable(exc))))
        size = frame_size(frame)
        if size > self.server.settings.max_frame:  # the caller asks again over Dask comms
            too_large = FrameTooLarge(f"a reply of {size} bytes is over the fast path's cap")
            frame = encode_frame(rid, (False, too_large))
        if self.transport is not None and not self.transport.is_closing():
            write_frame(self.transport, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        self._end_handshake()
        self.server._connections.discard(self)
        for task in self._tasks:
            task.cancel()
        if self.transport is not None:
            self.transport.close()


# -- the calling side -----------------------------------------------------------------------------


class FastConnection(_Framed):
    """One client connection: requests are pipelined and matched to replies by request id.

    Made by :func:`open_connection`: :attr:`ready` resolves once the handshake proved that both
    ends hold ``key``; no request goes out and no reply is read before.

    Parameters
    ----------
    key : bytes
        The worker's fast-path secret.
    max_frame : int
        The largest request sent or reply accepted.
    """

    def __init__(self, key: bytes, max_frame: int = FastSettings.max_frame) -> None:
        super().__init__(max_frame)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.max_frame = max_frame
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._auth: ClientHandshake | None = ClientHandshake(key)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._next = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def request(self, op: str, kwargs: dict[str, Any], on_late: Late | None = None) -> Any:
        """Call ``op(**kwargs)`` on the worker; ``ConnectionResetError`` when the connection drops,
        :class:`FrameTooLarge` (nothing sent) when the request is over the cap. When the caller
        is cancelled, ``on_late`` gets the future of the reply that still comes (see
        :meth:`FastPool.call`)."""
        if self.closed or self.transport is None or self._auth is not None:
            raise ConnectionResetError("fast connection closed")
        self._next += 1
        rid = self._next
        frame = encode_frame(rid, (op, kwargs))  # an unpicklable argument raises here, as on Dask comms
        size = frame_size(frame)
        if size > self.max_frame:
            raise FrameTooLarge(f"a request of {size} bytes is over the fast path's cap of {self.max_frame}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting[rid] = future
        waiting = True
        try:
            write_frame(self.transport, frame)
            return await future
        except asyncio.CancelledError:
            if on_late is not None:
                if self.closed:
                    on_late(None)
                else:  # the worker still answers it: that reply ends the call
                    late = loop.create_future()
                    late.add_done_callback(on_late)
                    self._waiting[rid] = late
                    waiting = False
            raise
        finally:
            if waiting:
                self._waiting.pop(rid, None)

    def bad_frame(self, exc: ValueError) -> None:
        logger.warning("fast path: closed the connection to %s: %s", self._peer(), exc)
        self.close()

    def received(self, frame: Frame) -> None:
        future = self._waiting.pop(frame.rid, None)
        if future is None or future.done():
            return  # its caller gave up (deadline, race lost)
        try:
            ok, value = frame.load()
        except Exception as exc:
            future.set_exception(exc)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def handshake(self, data: bytes) -> None:
        auth = self._auth
        assert auth is not None
        try:
            answer = auth.feed(data)
        except AuthError as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            self.close()
            return
        if answer and self.transport is not None:
            self.transport.write(answer)
        if auth.done:
            self._auth = None
            if not self.ready.done():
                self.ready.set_result(None)

    def _peer(self) -> Any:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionResetError(f"fast connection lost in the handshake: {exc}"))
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(ConnectionResetError(f"fast connection lost: {exc}"))

    def close(self) -> None:
        """Close the connection; calls still waiting fail with ``ConnectionResetError``."""
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(None)


async def open_connection(
    host: str, port: int, key: bytes, ssl: SSLContext | None = None, settings: FastSettings | None = None
) -> FastConnection:
    """Connect to a fast server and complete the handshake within ``settings.handshake_timeout``.

    Raises an ``OSError``: :class:`~cloudflow_nb.runtime.auth.AuthError` when either end fails to
    prove it holds ``key``, ``TimeoutError`` when the handshake takes too long, or the connect error.
    """
    settings = settings or FastSettings.from_config()
    loop = asyncio.get_running_loop()

    async def connect() -> FastConnection:
        _, conn = await loop.create_connection(lambda: FastConnection(key, settings.max_frame), host, port, ssl=ssl)
        try:
            await conn.ready
        except BaseException:
            conn.close()
            raise
        return conn

    try:
        return await asyncio.wait_for(connect(), settings.handshake_timeout)
    except asyncio.TimeoutError as exc:  # not an OSError before Python 3.11
        raise TimeoutError(f"fast path: no handshake with {host}:{port} in {settings.handshake_timeout}s") from exc


class FastPool:
    """Fast connections to workers, beside the Dask ``ConnectionPool`` that stays the fallback.

    A worker's fast port and secret are asked once over Dask comms (``cf_fast``); a worker that
    has none, does not answer, fails the handshake, or is on neither ``tcp://`` nor ``tls://``
    (with the pool's TLS context) is called over Dask comms (tried again after
    :data:`RETRY_AFTER` seconds).

    Parameters
    ----------
    pool : ConnectionPool
        The Dask connection pool of this process's loop (its ``connection_args`` give the TLS context).
    settings : FastSettings, optional
        Default: :meth:`FastSettings.from_config`.
    """

    def __init__(self, pool: ConnectionPool, settings: FastSettings | None = None) -> None:
        self.pool = pool
        self.settings = settings or FastSettings.from_config()
        self.calls = 0  # calls answered over fast connections
        self.fallbacks = 0  # calls that went over Dask comms instead
        self.bulky = 0  # calls sent over Dask comms for their size
        self._ssl: SSLContext | None = pool.connection_args.get("ssl_context")  # type: ignore[assignment]
        self._connections: dict[str, FastConnection] = {}
        self._connecting: dict[str, asyncio.Task[FastConnection | None]] = {}
        self._failed: dict[str, float] = {}
        self._closed = False

    async def call(self, worker: str, op: str, bulky: bool = False, on_late: Late | None = None, **kwargs: Any) -> Any:
        """``op(**kwargs)`` on ``worker``: over its fast connection when there is one, else over
        Dask comms. ``bulky`` calls (megabytes of payload) take Dask comms, and so do requests or
        replies over the fast path's cap (such a reply's call runs again there). A connection lost
        mid-call raises ``ConnectionResetError`` (an ``OSError``, like a broken Dask comm); the
        next call reconnects.

        ``on_late`` is for a caller that gives up early (its task is cancelled): it is called
        once the call has really ended, with the future of the late reply (when the worker still
        answers over the fast connection) or ``None`` (the call ended with the cancel)."""
        if bulky:
            self.bulky += 1
            return await _dask_call(self.pool(worker), op, kwargs, on_late)
        conn = self._connections.get(worker)
        if conn is None or conn.closed:
            try:
                conn = await self._connect(worker)
            except asyncio.CancelledError:
                if on_late is not None:
                    on_late(None)
                raise
        if conn is None:
            self.fallbacks += 1
            return await _dask_call(self.pool(worker), op, kwargs, on_late)
        try:
            reply = await conn.request(op, kwargs, on_late)
        except FrameTooLarge:
            self.bulky += 1
            return await _dask_call(self.pool(worker), op, kwargs, on_late)
        except ConnectionError:
            if self._connections.get(worker) is conn:
                del self._connections[worker]
            raise
        self.calls += 1
        return reply

    async def _connect(self, worker: str) -> FastConnection | None:
        loop = asyncio.get_running_loop()
        scheme = worker.partition("://")[0]
        if scheme not in ("tcp", "tls") or (scheme == "tls" and self._ssl is None):
            return None
        if loop.time() - self._failed.get(worker, -RETRY_AFTER) < RETRY_AFTER:
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
            info = await self.pool(worker).cf_fast()
        except Exception as exc:
            if worker_gone(exc):  # unreachable over Dask comms too: the caller must know
                raise
            info = None  # a worker without the handler, or too slow to say: Dask comms carry its calls
        try:
            if not isinstance(info, dict):
                raise OSError("no fast port")
            ssl = self._ssl if worker.startswith("tls://") else None
            conn = await open_connection(get_address_host(worker), info["port"], info["key"], ssl, self.settings)
        except (OSError, asyncio.TimeoutError) as exc:  # no fast path for now: Dask comms carry its calls
            if isinstance(exc, AuthError):
                logger.warning("fast path: %s failed the handshake: %s", worker, exc)
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


Late = Callable[["asyncio.Future[Any] | None"], None]


async def _dask_call(rpc: Any, op: str, kwargs: dict[str, Any], on_late: Late | None) -> Any:
    """``op(**kwargs)`` over Dask comms; a cancel ends the call there and then."""
    try:
        return await getattr(rpc, op)(**kwargs)
    except asyncio.CancelledError:
        if on_late is not None:
            on_late(None)
        raise


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

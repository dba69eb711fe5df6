"""``cf.serve``: a JSON-over-HTTP endpoint for a deployment.

``POST /predict`` takes one row (a JSON object) or a request of several rows (a JSON list) and
answers ``{"columns": [...], "rows": [...]}``. Arrays travel as nested lists, ``bytes`` as base64
strings, and a ``nan`` or an infinity in a result as ``null``. Around it, the conventions serving
tools expect: ``GET /openapi.json`` (OpenAPI 3.1, from the flow's schemas: :mod:`~cloudflow_nb.openapi`)
and ``GET /docs`` (a page rendered from it); ``GET /metrics`` in Prometheus text format
(:mod:`~cloudflow_nb.metrics`); ``GET /healthz`` (liveness) and ``GET /readyz`` (every stage has a
live replica, else 503 saying why: :mod:`~cloudflow_nb.probes`); ``GET /stats`` (``dep.stats()``)
and the older ``GET /health``. With ``token=``, ``/predict``, ``/metrics`` and ``/stats`` need
``Authorization: Bearer <token>`` (compared in constant time); the probes and the docs stay open.
Every answer but ``/metrics`` and ``/docs`` is JSON, errors as ``{"error": "..."}``:

====  ==============================================================================================
400   the body is not JSON, nests deeper than ``max_depth``, holds ``NaN``/``Infinity``, or does not
      fit the flow's input schema (a missing or unknown column, a ragged or non-numeric array)
401   the endpoint has a token and the request did not bring it (``WWW-Authenticate: Bearer``)
404   no such path
405   a method the path does not take (the ``Allow`` header lists those it does)
413   the body is larger than ``max_body`` bytes, judged from ``Content-Length`` before it is read; a
      body up to twice the limit is read and dropped first, so a client that sends before it reads
      hears the answer, and a larger one is answered at once and its connection closed
415   the body's ``Content-Type`` is not JSON (no ``Content-Type`` at all is read as JSON)
422   an operator failed (``operator`` names it), or a lookup found no value for its key
429   a stage had no room (``Retry-After`` says when to retry), or too many big bodies were being
      decoded at once
503   the deployment is closed, or the cluster could not serve the request
504   the request's deadline passed; it counts from the request's arrival, decoding included
500   a bug in the server, and nothing else
====  ==============================================================================================

A body over ``offload_over`` bytes is decoded (and its answer encoded) in one of ``decoders``
worker processes, so that other clients are answered meanwhile: ``json.loads`` holds the GIL, so a
thread would not do. Malformed HTTP itself (a bad request line) is answered by tornado, not here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import multiprocessing
import re
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, stream_request_body

from cloudflow_nb.errors import DeploymentError, FlowError, FlowTimeoutError, SchemaError
from cloudflow_nb.httpjson import BodyFormat, decode_request, encode, encode_table, error_reply
from cloudflow_nb.metrics import registry
from cloudflow_nb.openapi import docs_page, spec
from cloudflow_nb.probes import not_ready

if TYPE_CHECKING:
    from collections.abc import Callable

    from cloudflow_nb.runtime.deployment import Deployment

__all__ = ["Endpoint", "serve"]

MAX_BODY = 64 * 2**20
MAX_DEPTH = 32
OFFLOAD_OVER = 2**20
DECODERS = 2
# A refused body up to DRAIN times max_body is read (and dropped) before the answer; a larger one is not.
DRAIN = 2
# How long after the request's deadline a body may still be coming in before the connection is closed.
BODY_GRACE = 5.0
PATHS = {
    "/predict": "POST",
    "/openapi.json": "GET",
    "/docs": "GET",
    "/metrics": "GET",
    "/healthz": "GET",
    "/readyz": "GET",
    "/stats": "GET",
    "/health": "GET",
}
# The paths a token guards; the probes and the API's description stay open.
GUARDED = frozenset({"/predict", "/metrics", "/stats"})
_TOKEN = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: it travels in a header

T = TypeVar("T")


def serve(
    deployment: Deployment,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_body: int = MAX_BODY,
    max_depth: int = MAX_DEPTH,
    offload_over: int = OFFLOAD_OVER,
    decoders: int = DECODERS,
    token: str | None = None,
) -> Endpoint:
    """Serve ``deployment`` over HTTP on ``host:port`` (0 picks a free port); see :class:`Endpoint`.

    Parameters
    ----------
    max_body : int
        Largest request body in bytes; larger ones answer 413.
    max_depth : int
        Deepest nesting of lists and objects a body may have; deeper ones answer 400.
    offload_over : int
        Bodies larger than this (bytes) are decoded in a worker process.
    decoders : int
        Worker processes for those, and how many such bodies may be in hand at once (more: 429).
    token : str, optional
        A bearer token that ``/predict``, ``/metrics`` and ``/stats`` require (401 without it).
    """
    return Endpoint(deployment, host, port, max_body=max_body, max_depth=max_depth, offload_over=offload_over,
                    decoders=decoders, token=token)  # fmt: skip


class Endpoint:
    """An HTTP server thread in front of a deployment; ``.url`` is where it listens.

    Examples
    --------
    >>> with cf.serve(dep) as endpoint:   # doctest: +SKIP
    ...     requests.post(endpoint.url + "/predict", json={"x": 1}).json()
    {'columns': ['qid', 'x', 'y'], 'rows': [{'qid': 0, 'x': 1, 'y': 2}]}
    """

    def __init__(
        self,
        deployment: Deployment,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body: int = MAX_BODY,
        max_depth: int = MAX_DEPTH,
        offload_over: int = OFFLOAD_OVER,
        decoders: int = DECODERS,
        token: str | None = None,
    ) -> None:
        _check_limits(max_body=max_body, max_depth=max_depth, offload_over=offload_over, decoders=decoders)
        _check_token(token)
        self.deployment = deployment
        self._token = None if token is None else token.encode()
        flow = deployment.flow
        self.spec = spec(flow.name, flow.input_schema, flow.schema, token=token is not None)
        self.answers: Counter[tuple[str, int]] = Counter()  # (path, status) -> how many; on the loop thread
        self.registry = registry(flow.name, self.live_stats, self.answers)
        self.max_body = max_body
        self.offload_over = offload_over
        self.format = BodyFormat.of(deployment.flow.input_schema, max_depth)
        self.decoders = _Decoders(decoders)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port), name="cloudflow-http", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        self.url = f"http://{host}:{self.port}"

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            sockets = bind_sockets(port, host)
            self.port: int = sockets[0].getsockname()[1]
            args = {"endpoint": self}
            handlers = [(re.escape(path), _HANDLERS[path], args) for path in PATHS]
            app = Application(handlers, default_handler_class=_NotFound, default_handler_args=args)
            # The handlers cap bodies themselves (and answer 413 in JSON); tornado's own cap would answer
            # an empty 400, so it is set out of the way. Bodies past the cap are discarded, never kept.
            # A body still coming in after the request's deadline could only end in 504: stop reading it.
            body_timeout = self.deployment.timeout + BODY_GRACE
            self._server = HTTPServer(app, max_body_size=sys.maxsize, body_timeout=body_timeout)
            self._server.add_sockets(sockets)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value lets a request through (always, without a token)."""
        if self._token is None:
            return True
        scheme, _, credentials = (header or "").partition(" ")
        given = credentials.strip().encode("utf-8", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._token)

    def live_stats(self) -> dict[str, Any]:
        """``dep.stats()``; ``DeploymentError`` once the deployment is closed."""
        if self.deployment.closed:
            raise DeploymentError(f"deployment {self.deployment.name!r} is closed")
        return self.deployment.stats()

    def close(self) -> None:
        """Stop listening and stop the decoding processes (the deployment stays up)."""
        if not self._thread.is_alive():
            return

        def stop() -> None:
            self._server.stop()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)
        self._loop.close()
        self.decoders.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cf.Endpoint {self.url} -> {self.deployment!r}>"


def _check_token(token: str | None) -> None:
    if token is not None and not (isinstance(token, str) and _TOKEN.fullmatch(token)):
        shown = token if not isinstance(token, str) else f"{len(token)} characters"
        raise SchemaError(f"serve: token must be non-empty printable ASCII without spaces, got {shown!r}")


def _check_limits(**limits: int) -> None:
    for name, value in limits.items():
        least = 1 if name == "decoders" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SchemaError(f"serve: {name} must be an integer of at least {least}, got {value!r}")


class _Decoders:
    """Worker processes for big bodies, and the count of big bodies in hand (at most ``size``).

    Used from the endpoint's event loop thread only. Processes start with the first big body.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def take(self) -> bool:
        """Reserve room for one big body; False when ``size`` are already in hand."""
        if self.busy >= self.size:
            return False
        self.busy += 1
        return True

    def release(self) -> None:
        self.busy -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker process; a pool whose process died is replaced next time."""
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # never fork a process that has threads
            self._pool = concurrent.futures.ProcessPoolExecutor(self.size, mp_context=context)
        try:
            return await asyncio.wrap_future(self._pool.submit(fn, *args))
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None
            raise FlowError("the process decoding the request body died; retry later") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


@stream_request_body
class _Handler(RequestHandler):
    """JSON answers for everything, bodies read in pieces and capped (none of the GETs reads one)."""

    def initialize(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.deployment = endpoint.deployment
        self.chunks: list[bytes] = []
        self.size = 0
        self.big = False  # holds one of the endpoint's decoder slots
        self.working = False  # the body is in and the request is being answered
        self.refusal: tuple[int, dict[str, Any], dict[str, str]] | None = None

    def prepare(self) -> None:
        self.arrived = asyncio.get_running_loop().time()
        declared = self.request.headers.get("Content-Length", "0")
        self.declared = int(declared) if declared.isdigit() else 0
        if self.request.path in GUARDED and not self.endpoint.authorized(self.request.headers.get("Authorization")):
            message = "this endpoint needs a token: send the header 'Authorization: Bearer <token>'"
            self.reply(401, {"error": message}, {"WWW-Authenticate": 'Bearer realm="cloudflow"'})
            return
        self.check(self.declared)

    def data_received(self, chunk: bytes) -> None:
        if self._finished:  # answered already (401, 404): the rest of the body is dropped unread
            return
        self.size += len(chunk)
        if self.refusal is None:
            self.check(self.size)
        if self.refusal is None:
            self.chunks.append(chunk)
        elif self.size > DRAIN * self.endpoint.max_body:
            self.reply(*self.refusal)  # stop reading: answered now, and the connection closes

    def check(self, size: int) -> None:
        """Refuse the body once it is (or is declared) too large, or big with no decoder slot free."""
        ep = self.endpoint
        if size > ep.max_body:
            self.refuse(413, {"error": f"request body is larger than the limit of {ep.max_body} bytes"})
        elif size > ep.offload_over and not self.big:
            self.big = ep.decoders.take()
            if not self.big:
                message = f"{ep.decoders.size} large request bodies are being decoded already; retry later"
                self.refuse(429, {"error": message}, {"Retry-After": "1"})

    def refuse(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Drop the body and answer ``status`` once it has been read, so that a client that sends all
        before it reads hears why; a body over ``DRAIN`` times ``max_body`` is answered at once."""
        self.chunks.clear()
        self.refusal = (status, body, headers or {})
        if self.declared > DRAIN * self.endpoint.max_body:
            self.reply(*self.refusal)

    def refused(self) -> bool:
        """Answer the refusal of the body, if any (the request's method then does nothing else)."""
        if self.refusal is not None:
            self.reply(*self.refusal)
        return self.refusal is not None

    def body(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.reply_bytes(status, encode(body), headers)

    def reply_bytes(
        self, status: int, data: bytes, headers: dict[str, str] | None = None, kind: str = "application/json"
    ) -> None:
        if self._finished:
            return
        self.set_status(status)
        self.set_header("Content-Type", kind)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.finish(data)

    def reply_error(self, exc: FlowError) -> None:
        self.reply(*error_reply(exc))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:
            allowed = PATHS.get(self.request.path, "")
            self.set_header("Allow", allowed)
            message = f"method {self.request.method} is not allowed on {self.request.path} (use {allowed})"
        elif status_code == 500:
            message = "internal server error (a bug in the server; it is logged)"
        else:
            message = self._reason.lower()
        self.reply(status_code, {"error": message})

    def on_finish(self) -> None:
        self.release()
        path = self.request.path if self.request.path in PATHS else "other"
        self.endpoint.answers[path, self.get_status()] += 1

    def on_connection_close(self) -> None:
        if not self.working:  # the client left while sending; a request at work keeps its slot to the end
            self.release()

    def release(self) -> None:
        """Give back the decoder slot, if this request holds one."""
        if self.big:
            self.big = False
            self.endpoint.decoders.release()


class _Predict(_Handler):
    def prepare(self) -> None:
        super().prepare()
        kind = self.request.headers.get("Content-Type")
        media = (kind or "").partition(";")[0].strip().lower()
        if kind is not None and self.refusal is None and not self._finished and not _is_json(media):
            message = f"request body must be JSON: Content-Type {kind!r} is not application/json"
            self.refuse(415, {"error": message})

    async def post(self) -> None:
        if self.refused():
            return
        self.working = True
        try:
            await self.answer()
        finally:
            self.release()

    async def answer(self) -> None:
        ep, dep = self.endpoint, self.deployment
        big, body = self.big, self.body()
        loop = asyncio.get_running_loop()
        try:
            rows = await ep.decoders.run(decode_request, body, ep.format) if big else decode_request(body, ep.format)
            del body
            left = dep.timeout - (loop.time() - self.arrived)
            if left <= 0:
                raise FlowTimeoutError(
                    f"flow {dep.plan.name!r}: the deadline of {dep.timeout:g} s passed while the request "
                    "was read and decoded"
                )
            table = await asyncio.wrap_future(dep.submit(rows, timeout=left))
            answer = await ep.decoders.run(encode_table, table) if big else encode_table(table)
        except FlowError as exc:
            self.reply_error(exc)
        else:
            self.reply_bytes(200, answer)


class _Health(_Handler):
    def get(self) -> None:
        if self.refused():
            return
        dep = self.deployment
        self.reply(503 if dep.closed else 200, {"flow": dep.plan.name, "status": "closed" if dep.closed else "ok"})


class _Stats(_Handler):
    async def get(self) -> None:
        if self.refused():
            return
        try:
            stats = await asyncio.to_thread(self.deployment.stats)
        except FlowError as exc:
            self.reply_error(exc)
        else:
            self.reply(200, stats)


class _OpenAPI(_Handler):
    def get(self) -> None:
        if not self.refused():
            self.reply(200, self.endpoint.spec)


class _Docs(_Handler):
    def get(self) -> None:
        if not self.refused():
            page = docs_page(self.endpoint.spec, self.endpoint.url).encode()
            self.reply_bytes(200, page, kind="text/html; charset=utf-8")


class _Metrics(_Handler):
    async def get(self) -> None:
        if self.refused():
            return
        text = await asyncio.to_thread(generate_latest, self.endpoint.registry)
        self.reply_bytes(200, text, kind=CONTENT_TYPE_LATEST)


class _Healthz(_Handler):
    def get(self) -> None:
        if not self.refused():
            self.reply(200, {"flow": self.deployment.flow.name, "status": "alive"})


class _Readyz(_Handler):
    async def get(self) -> None:
        if self.refused():
            return
        name = self.deployment.flow.name
        try:
            reasons = not_ready(await asyncio.to_thread(self.endpoint.live_stats))
        except (FlowError, TimeoutError) as exc:
            reasons = [str(exc) or "the deployment did not report its state in time"]
        if reasons:
            self.reply(503, {"flow": name, "status": "not ready", "error": "; ".join(reasons)})
        else:
            self.reply(200, {"flow": name, "status": "ready"})


class _NotFound(_Handler):
    def prepare(self) -> None:
        paths = ", ".join(f"{method} {path}" for path, method in PATHS.items())
        self.reply(404, {"error": f"no such path {self.request.path!r} (paths: {paths})"})


def _is_json(media: str) -> bool:
    return media in ("", "application/json") or (media.startswith("application/") and media.endswith("+json"))


_HANDLERS: dict[str, type[_Handler]] = {
    "/predict": _Predict,
    "/openapi.json": _OpenAPI,
    "/docs": _Docs,
    "/metrics": _Metrics,
    "/healthz": _Healthz,
    "/readyz": _Readyz,
    "/stats": _Stats,
    "/health": _Health,
}

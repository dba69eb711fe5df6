"""``cf.serve``: a JSON-over-HTTP endpoint for a deployment.

``POST /predict`` takes one row (a JSON object) or a request of several rows (a JSON list) and
answers ``{"columns": [...], "rows": [...]}``; ``GET /health`` and ``GET /stats`` report on the
deployment. Arrays travel as nested lists, ``bytes`` as base64 strings. Bad input answers 400,
a failing operator 422, a missed deadline 504; every answer is JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from cloudflow_nb.errors import FlowError, FlowTimeoutError, OperatorError, SchemaError
from cloudflow_nb.table import QID, Schema, Table

if TYPE_CHECKING:
    from cloudflow_nb.runtime.deployment import Deployment

__all__ = ["Endpoint", "serve"]


def serve(deployment: Deployment, host: str = "127.0.0.1", port: int = 0) -> Endpoint:
    """Serve ``deployment`` over HTTP on ``host:port`` (0 picks a free port); see :class:`Endpoint`."""
    return Endpoint(deployment, host, port)


class Endpoint:
    """An HTTP server thread in front of a deployment; ``.url`` is where it listens.

    Examples
    --------
    >>> with cf.serve(dep) as endpoint:   # doctest: +SKIP
    ...     requests.post(endpoint.url + "/predict", json={"x": 1}).json()
    {'columns': ['qid', 'x', 'y'], 'rows': [{'qid': 0, 'x': 1, 'y': 2}]}
    """

    def __init__(self, deployment: Deployment, host: str = "127.0.0.1", port: int = 0) -> None:
        self.deployment = deployment
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
            args = {"deployment": self.deployment}
            app = Application([(r"/predict", _Predict, args), (r"/health", _Health, args), (r"/stats", _Stats, args)])
            self._server = HTTPServer(app)
            self._server.add_sockets(sockets)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()

    def close(self) -> None:
        """Stop listening (the deployment stays up)."""
        if not self._thread.is_alive():
            return

        def stop() -> None:
            self._server.stop()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<cf.Endpoint {self.url} -> {self.deployment!r}>"


class _Handler(RequestHandler):
    def initialize(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def reply(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, default=_json_value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.reply(status_code, {"error": self._reason})


class _Predict(_Handler):
    async def post(self) -> None:
        try:
            payload = json.loads(self.request.body or b"null")
        except ValueError as exc:
            self.reply(400, {"error": f"body is not JSON: {exc}"})
            return
        try:
            request = _decode_request(payload, self.deployment.flow.input_schema)
            table = await asyncio.wrap_future(self.deployment.submit(request))
        except SchemaError as exc:
            self.reply(400, {"error": str(exc)})
        except OperatorError as exc:
            self.reply(422, {"error": str(exc), "operator": exc.operator})
        except FlowTimeoutError as exc:
            self.reply(504, {"error": str(exc)})
        except FlowError as exc:
            self.reply(500, {"error": str(exc)})
        else:
            self.reply(200, _encode_table(table))


class _Health(_Handler):
    def get(self) -> None:
        dep = self.deployment
        self.reply(503 if dep.closed else 200, {"flow": dep.plan.name, "status": "closed" if dep.closed else "ok"})


class _Stats(_Handler):
    async def get(self) -> None:
        self.reply(200, await asyncio.to_thread(self.deployment.stats))


def _decode_request(payload: Any, schema: Schema) -> list[dict[str, Any]]:
    """JSON rows -> request rows, turning lists into arrays and base64 into bytes where the schema asks."""
    rows = [payload] if isinstance(payload, Mapping) else payload
    if not isinstance(rows, list):
        raise SchemaError(f"request: expected a JSON object or a list of objects, got {type(payload).__name__}")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(f"request row {i} must be a JSON object, got {type(row).__name__}")
        out.append({k: _decode_value(schema[k], v) if k in schema and k != QID else v for k, v in row.items()})
    return out


def _decode_value(tp: type, value: Any) -> Any:
    if value is None:
        return value
    if tp is np.ndarray and isinstance(value, list):
        return np.asarray(value)
    if tp is bytes and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            return value  # the schema check names the column and the expected type
    return value


def _encode_table(table: Table) -> dict[str, Any]:
    return {"columns": list(table.columns), "rows": [row.to_dict() for row in table]}


def _json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "tolist"):  # torch tensors and the like
        return value.tolist()
    return repr(value)

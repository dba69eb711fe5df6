"""``cloudflow-nb serve module:flow``: serve a flow over HTTP from a shell.

``module:attr`` names a ``cf.Flow``, or a function of no arguments that returns one, in a module
importable from the current directory. The flow is deployed on an embedded ``cf.LocalCluster``
(``--workers``, ``--gpu-workers``) or, with ``--scheduler ADDR``, on an existing Dask cluster
(``cf.connect``; a one-file module is sent to its workers with Dask's ``upload_file``, a package
must be installed there; the command waits up to ``--wait-workers`` seconds for a first worker, so
it may start beside a cluster that is still coming up), and served with ``cf.serve`` on
``--host``/``--port`` (loopback, 8000 by default).
The command prints where it listens, one URL a line, and runs until SIGTERM or SIGINT (Ctrl-C); it
then closes the endpoint, the deployment and the cluster it started, and exits 0. A bad target
exits 2, a flow that cannot be deployed 1, each with one line saying why.

Examples
--------
.. code-block:: console

    $ cloudflow-nb serve shop:flow --port 8000 --workers 2
    $ CLOUDFLOW_NB_TOKEN=s3cret cloudflow-nb serve shop:make_flow --host 0.0.0.0
    $ python -m cloudflow_nb serve shop:flow --scheduler tcp://10.0.0.5:8786
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import ipaddress
import os
import signal
import sys
import threading
from typing import Any

from cloudflow_nb.errors import DeploymentError, FlowError
from cloudflow_nb.flow import Flow

__all__ = ["load_flow", "main"]

TOKEN_VAR = "CLOUDFLOW_NB_TOKEN"
PROG = "cloudflow-nb"
DESCRIPTION = (
    "Serve a flow over HTTP until SIGTERM or Ctrl-C. module:flow names a cf.Flow, or a function of no "
    "arguments returning one, in a module importable from the current directory."
)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default); the exit status."""
    args = _parser().parse_args(argv)
    return _serve(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve cloudflow_nb flows.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve a flow over HTTP", description=DESCRIPTION)
    serve.add_argument("target", metavar="module:flow", help="a cf.Flow, or a function returning one")
    serve.add_argument("--scheduler", metavar="ADDR", help="an existing Dask scheduler (default: embedded cluster)")
    serve.add_argument(
        "--wait-workers",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --scheduler: how long to wait for a first worker to join (default: %(default)s)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on, 0 for any (default: %(default)s)")
    serve.add_argument("--workers", type=int, default=2, help="embedded cluster: CPU workers (default: %(default)s)")
    serve.add_argument(
        "--gpu-workers", type=int, help="embedded cluster: GPU-tagged workers (default: 1 if the flow has gpu stages)"
    )
    serve.add_argument("--token", help=f"bearer token for /predict, /metrics, /stats (default: ${TOKEN_VAR})")
    serve.add_argument(
        "--optimize", action=argparse.BooleanOptionalAction, default=True, help="optimize the plan (default: yes)"
    )
    return parser


def load_flow(target: str) -> Flow:
    """The flow ``module:attr`` names, importing the module (from the current directory first)."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise FlowError(f"expected module:attribute (like 'shop:flow'), got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise FlowError(f"cannot import module {module_name!r}: {exc}") from None
    except Exception as exc:
        raise FlowError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(module, attr):
        flows = sorted(k for k, v in vars(module).items() if isinstance(v, Flow)) or ["none"]
        raise FlowError(f"module {module_name!r} has no attribute {attr!r} (flows in it: {', '.join(flows)})")
    found = getattr(module, attr)
    if callable(found) and not isinstance(found, Flow):
        try:
            found = found()
        except Exception as exc:
            raise FlowError(f"calling {target}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(found, Flow):
        raise FlowError(f"{target} is a {type(found).__name__}, not a cf.Flow or a function returning one")
    return found


def _serve(args: argparse.Namespace) -> int:
    try:
        flow = load_flow(args.target)
    except FlowError as exc:
        return _fail(str(exc), 2)
    token = args.token or os.environ.get(TOKEN_VAR) or None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Worker processes started while SIGINT is ignored ignore it too: Ctrl-C in a terminal reaches the
    # whole process group, and only this process should act on it (by closing the workers in order).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with contextlib.ExitStack() as stack:
            cluster, where = _cluster(args, flow)
            stack.enter_context(cluster)
            if args.scheduler:
                _await_worker(cluster, args.scheduler, args.wait_workers)
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            import cloudflow_nb as cf

            dep = stack.enter_context(cluster.deploy(flow, optimize=args.optimize))
            endpoint = stack.enter_context(cf.serve(dep, args.host, args.port, token=token))
            _announce(flow, dep, endpoint.url, where, token is not None, args.host)
            while not stop.wait(0.5):
                pass
            print(f"{PROG}: stopping", flush=True)
    except (FlowError, OSError) as exc:
        return _fail(str(exc) or type(exc).__name__, 1)
    print(f"{PROG}: stopped", flush=True)
    return 0


def _cluster(args: argparse.Namespace, flow: Flow) -> tuple[Any, str]:
    import cloudflow_nb as cf

    if args.scheduler:
        cluster = cf.connect(args.scheduler)
        _upload(cluster, args.target.partition(":")[0])
        return cluster, f"the Dask cluster at {args.scheduler}"
    gpu = args.gpu_workers
    if gpu is None:
        gpu = int(any(stage.gpu for stage in flow.optimize(args.optimize).stages))
    cluster = cf.LocalCluster(workers=args.workers, gpu_workers=gpu, dashboard=False)
    return cluster, f"an embedded cluster of {args.workers} CPU and {gpu} GPU-tagged workers"


def _await_worker(cluster: Any, address: str, seconds: float) -> None:
    """Wait up to ``seconds`` for the cluster's first worker: a cluster may still be starting."""
    if cluster.client.scheduler_info().get("workers"):
        return
    print(f"{PROG}: waiting up to {seconds:g} s for a worker to join {address}", flush=True)
    try:
        cluster.client.wait_for_workers(1, timeout=seconds)
    except TimeoutError:
        raise DeploymentError(
            f"no worker joined the Dask cluster at {address} within {seconds:g} s; "
            f"start one with 'dask worker {address}'"
        ) from None


def _upload(cluster: Any, module_name: str) -> None:
    """Send a one-file module to the workers (Dask's ``upload_file``, for later workers too), so that
    workers that cannot import it (another machine or directory) run its functions all the same; a
    module inside a package must be importable on the workers already."""
    path = getattr(sys.modules[module_name], "__file__", None) or ""
    if "." not in module_name and path.endswith(".py") and os.path.basename(path) != "__init__.py":
        cluster.client.upload_file(path)


def _announce(flow: Flow, dep: Any, url: str, where: str, token: bool, host: str) -> None:
    stages = len(dep.plan.stages)
    print(f"{PROG}: serving flow {flow.name!r} ({stages} stage{'s' * (stages != 1)}) on {where}")
    print(f"docs     {url}/docs")
    print(f"openapi  {url}/openapi.json")
    print(f"metrics  {url}/metrics")
    print(f"predict  POST {url}/predict")
    print(f"health   {url}/healthz  {url}/readyz")
    if token:
        print("token    /predict, /metrics and /stats need 'Authorization: Bearer <token>'")
    elif not _loopback(host):
        print(f"{PROG}: warning: listening on {host} without a token: anyone who reaches it may call the flow")
    print(f"{PROG}: stop with Ctrl-C or SIGTERM", flush=True)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _fail(message: str, status: int) -> int:
    print(f"{PROG} serve: error: {message}", file=sys.stderr, flush=True)
    return status

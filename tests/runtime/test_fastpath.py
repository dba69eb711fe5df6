"""The fast request transport: settings, pipelined connections, fallback to Dask comms, and
requests over it on the serving cluster (counted, never mixed, surviving dropped connections)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from typing import Any

import dask
import distributed
import numpy as np
import pytest
from dask_procs import free_port, spawn_dask
from distributed.security import Security

import cloudflow_nb as cf
from cloudflow_nb.errors import DeploymentError
from cloudflow_nb.runtime.fastpath import (
    FastPool,
    FastServer,
    FastSettings,
    open_connection,
    parse_settings,
)

# -- settings ---------------------------------------------------------------------------------


def test_settings_come_from_dask_config_and_bad_values_name_the_key() -> None:
    assert FastSettings.from_config() == FastSettings()
    with dask.config.set({"cloudflow.fastpath.port": "9000:9003", "cloudflow.fastpath.max_frame": "1 MiB"}):
        settings = FastSettings.from_config()
    assert (settings.ports, settings.max_frame) == ((9000, 9001, 9002, 9003), 2**20)
    assert parse_settings({"port": 9100, "host": "0.0.0.0", "handshake-timeout": "500ms"}) == FastSettings(
        "0.0.0.0", (9100,), handshake_timeout=0.5
    )
    for key, value in [("port", "nine"), ("port", 70000), ("max-frame", 0), ("handshake-timeout", "soon")]:
        with pytest.raises(DeploymentError, match=f"cloudflow.fastpath.{key}: {value!r}"):
            parse_settings({key: value})


# -- connections without a cluster ----------------------------------------------------------------


async def _echo(x: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return x


def _boom() -> None:
    raise KeyError("boom")


def _blob(n: int) -> bytes:
    return b"z" * n


def _serve(coro_fn: Any, settings: FastSettings | None = None) -> Any:
    async def main() -> Any:
        server = FastServer({"echo": _echo, "boom": _boom, "blob": _blob}, "127.0.0.1", settings=settings)
        port = await server.start()
        try:
            return await coro_fn(server, port)
        finally:
            server.close()

    return asyncio.run(main())


def test_pipelined_requests_on_one_connection_never_mix() -> None:
    async def check(server: FastServer, port: int) -> None:
        conn = await open_connection("127.0.0.1", port, server.key)
        delays = [(i * 7 % 10) / 1000 for i in range(60)]
        replies = await asyncio.gather(*(conn.request("echo", {"x": i, "delay": d}) for i, d in enumerate(delays)))
        assert replies == list(range(60))
        with pytest.raises(KeyError, match="boom"):
            await conn.request("boom", {})
        with pytest.raises(KeyError):
            await conn.request("missing", {})
        assert server.requests == 62
        conn.close()

    _serve(check)


def test_a_dropped_connection_fails_its_waiting_calls_with_oserror() -> None:
    async def check(server: FastServer, port: int) -> None:
        conn = await open_connection("127.0.0.1", port, server.key)
        slow = asyncio.ensure_future(conn.request("echo", {"x": 1, "delay": 5}))
        await asyncio.sleep(0.05)
        server.close()
        with pytest.raises(ConnectionResetError):
            await slow
        with pytest.raises(ConnectionResetError, match="closed"):
            await conn.request("echo", {"x": 2, "delay": 0})

    _serve(check)


class _DaskPool:
    """Stands in for a Dask ``ConnectionPool``: ``pool(worker).op(**kwargs)``."""

    def __init__(self, port: int | None, key: bytes) -> None:
        self.port = port
        self.key = key
        self.connection_args: dict[str, Any] = {}
        self.calls: list[str] = []

    def __call__(self, worker: str) -> Any:
        pool = self

        class Rpc:
            async def cf_fast(self) -> dict[str, Any] | None:
                if pool.port == -1:
                    raise OSError("worker down")
                return None if pool.port is None else {"port": pool.port, "key": pool.key}

            async def echo(self, x: Any, delay: float) -> Any:
                pool.calls.append("echo")
                return -x if isinstance(x, int) else x

            async def blob(self, n: int) -> bytes:
                pool.calls.append("blob")
                return b"d" * n

        return Rpc()


def test_pool_uses_the_fast_port_reconnects_and_falls_back() -> None:
    async def check(server: FastServer, port: int) -> None:
        dask = _DaskPool(port, server.key)
        fast = FastPool(dask)  # type: ignore[arg-type]
        worker = "tcp://127.0.0.1:1"
        assert await asyncio.gather(*(fast.call(worker, "echo", x=i, delay=0) for i in range(10))) == list(range(10))
        assert (fast.calls, fast.fallbacks, dask.calls) == (10, 0, [])
        fast.drop(worker)
        assert await fast.call(worker, "echo", x=5, delay=0) == 5  # a new connection
        tls = "tls://127.0.0.1:1"
        assert await fast.call(tls, "echo", x=5, delay=0) == -5  # TLS without a TLS context: Dask comms
        dask.port = None  # a worker without a fast port
        assert await fast.call("tcp://127.0.0.1:2", "echo", x=6, delay=0) == -6
        assert (fast.calls, fast.fallbacks) == (11, 2)
        dask.port = -1  # unreachable over Dask comms too: the caller sees the OSError
        with pytest.raises(OSError, match="worker down"):
            await fast.call("tcp://127.0.0.1:3", "echo", x=7, delay=0)
        fast.close()

    _serve(check)


def test_requests_and_replies_over_the_cap_take_dask_comms() -> None:
    settings = FastSettings(max_frame=1000)

    async def check(server: FastServer, port: int) -> None:
        dask = _DaskPool(port, server.key)
        fast = FastPool(dask, settings)  # type: ignore[arg-type]
        worker = "tcp://127.0.0.1:1"
        assert await fast.call(worker, "blob", n=10) == b"z" * 10
        assert await fast.call(worker, "echo", x=b"q" * 5000, delay=0) == b"q" * 5000  # not sent: too big
        assert await fast.call(worker, "blob", n=5000) == b"d" * 5000  # the reply was too big: asked again
        assert (fast.calls, fast.bulky, dask.calls) == (1, 2, ["echo", "blob"])
        assert await fast.call(worker, "echo", x=3, delay=0) == 3, "the connection stays up"
        assert server.refused == 0
        fast.close()

    _serve(check, settings)


def test_the_server_takes_the_first_free_configured_port() -> None:
    with socket.socket() as taken, socket.socket() as probe:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        settings = FastSettings(ports=(taken.getsockname()[1], free))

        async def check(server: FastServer, port: int) -> None:
            assert port == free
            conn = await open_connection("127.0.0.1", port, server.key)
            assert await conn.request("echo", {"x": 4, "delay": 0}) == 4
            conn.close()

        _serve(check, settings)


def test_a_tls_server_serves_tls_clients_only() -> None:
    security = Security.temporary()
    server_ssl = security.get_listen_args("worker")["ssl_context"]
    client_ssl = security.get_connection_args("client")["ssl_context"]

    async def main() -> None:
        server = FastServer({"echo": _echo}, "127.0.0.1", ssl=server_ssl, settings=FastSettings(handshake_timeout=2))
        port = await server.start()
        try:
            conn = await open_connection("127.0.0.1", port, server.key, client_ssl)
            assert await asyncio.gather(*(conn.request("echo", {"x": i, "delay": 0}) for i in range(20))) == list(
                range(20)
            )
            big = np.arange(300_000, dtype=np.float64)  # its buffer beside the pickle, encrypted like the rest
            np.testing.assert_array_equal(await conn.request("echo", {"x": big, "delay": 0}), big)
            conn.close()
            with pytest.raises(OSError, match="handshake"):  # plain TCP against TLS: nothing completes
                await open_connection("127.0.0.1", port, server.key, settings=FastSettings(handshake_timeout=2))
        finally:
            server.close()

    asyncio.run(main())


# -- on the serving cluster -----------------------------------------------------------------------


def triple(row):
    return row["x"] * 3


def slow_triple(row):
    time.sleep(0.02)
    return row["x"] * 3


@pytest.mark.cluster
def test_requests_go_over_the_fast_transport_and_never_mix(serving_cluster) -> None:
    flow = cf.Flow("fast", x=int).map(triple, names={"y": int})
    with serving_cluster.deploy(flow) as dep:
        fast = dep._router.fast
        before = fast.calls
        for round_ in range(4):  # 50 at a time: within the stage's admission bounds
            futures = [dep.submit({"x": i}) for i in range(50 * round_, 50 * round_ + 50)]
            assert [f.result(60)[0]["y"] for f in futures] == [3 * i for i in range(50 * round_, 50 * round_ + 50)]
        assert fast.calls - before >= 200
        assert all(not c.closed for c in fast._connections.values())


def widen(row):
    return np.concatenate([row["a"], row["a"]])


@pytest.mark.cluster
def test_megabyte_calls_take_dask_comms_then_return_to_the_fast_path(serving_cluster) -> None:
    flow = cf.Flow("bulky", a=np.ndarray).map(widen, names={"b": np.ndarray})
    with serving_cluster.deploy(flow) as dep:
        fast = dep._router.fast
        big = np.arange(200_000, dtype=np.float64)  # 1.6 MB in, 3.2 MB out
        before = fast.bulky
        assert np.array_equal(dep.predict({"a": big})[0]["b"], np.concatenate([big, big]))
        assert fast.bulky == before + 1
        small = np.arange(4.0)
        assert list(dep.predict({"a": small})[0]["b"]) == [0, 1, 2, 3, 0, 1, 2, 3]
        assert fast.bulky == before + 2, "the stage's last output was megabytes: Dask comms again"
        calls = fast.calls
        assert list(dep.predict({"a": small})[0]["b"]) == [0, 1, 2, 3, 0, 1, 2, 3]
        assert (fast.bulky, fast.calls) == (before + 2, calls + 1), "small again: back on the fast path"


@pytest.mark.cluster
def test_dropped_fast_connections_lose_no_request(serving_cluster) -> None:
    flow = cf.Flow("fastdrop", x=int).map(slow_triple, names={"y": int})
    with serving_cluster.deploy(flow, optimize=False) as dep:
        assert dep.predict({"x": 1})[0]["y"] == 3
        fast = dep._router.fast
        for round_ in range(2):
            futures = [dep.submit({"x": i}) for i in range(30)]
            time.sleep(0.05)
            if round_ == 0:  # the router drops its side
                dep._loop.run(_drop_all(fast), timeout=10)
            else:  # the workers drop theirs (and listen again on a new port when asked)
                serving_cluster.client.run(_close_fast_server)
            concurrent.futures.wait(futures, 60)
            assert [f.result()[0]["y"] for f in futures] == [3 * i for i in range(30)]
        assert dep.stats()["stages"][dep.plan.stages[0].name]["retries"] >= 1
        assert dep.predict({"x": 2})[0]["y"] == 6


async def _drop_all(fast: FastPool) -> None:
    for worker in list(fast._connections):
        fast.drop(worker)


def _close_fast_server(dask_worker: Any) -> None:
    dask_worker.plugins["cloudflow"].fast.close()


def _fast_server_port(dask_worker: Any) -> int | None:
    return dask_worker.plugins["cloudflow"].fast.port


@pytest.mark.cluster
@pytest.mark.slow
def test_a_dask_worker_listens_on_the_port_its_environment_names() -> None:
    scheduler, fast_port = free_port(), free_port()
    env = {"DASK_CLOUDFLOW__FASTPATH__PORT": f"{fast_port}"}
    address = f"tcp://127.0.0.1:{scheduler}"
    commands = [
        ["scheduler", "--host", "127.0.0.1", "--port", str(scheduler), "--no-dashboard"],
        ["worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
    ]
    procs = [spawn_dask(*args, env=env) for args in commands]
    try:
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            flow = cf.Flow("env", x=int).map(triple, names={"y": int})
            with cf.connect(client) as cluster, cluster.deploy(flow) as dep:
                assert dep.predict({"x": 2})[0]["y"] == 6
                assert list(client.run(_fast_server_port).values()) == [fast_port]
                assert dep._router.fast.calls >= 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)

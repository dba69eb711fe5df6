"""Hostile peers against a real worker's fast port: nothing they send is unpickled or allocated.

The attacker is plain Python (socket, pickle, struct; hmac where a test plays a cluster member
that knows the secret). The handshake's replay and reflection rules are checked on the pure state
machines first, without a cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import psutil
import pytest
from distributed.security import Security

import cloudflow_nb as cf
from cloudflow_nb.runtime import fastpath
from cloudflow_nb.runtime.auth import HELLO, MAGIC, AuthError, ClientHandshake, ServerHandshake, new_secret
from cloudflow_nb.runtime.fastpath import FastServer, FastSettings, open_connection
from cloudflow_nb.runtime.frames import HEADER, encode_frame

HANDSHAKE_TIMEOUT = 1.0  # seconds, on the test cluster's workers

# -- the handshake without a cluster --------------------------------------------------------------


def test_both_ends_prove_the_secret_and_a_wrong_one_fails_either_way() -> None:
    secret = new_secret()
    server, client = ServerHandshake(secret), ClientHandshake(secret)
    answer = client.feed(server.hello)
    assert len(answer) == 64
    assert client.feed(server.feed(answer)) == b""
    assert (server.done, client.done) == (True, True)
    intruder = ClientHandshake(new_secret())
    with pytest.raises(AuthError, match="client's answer"):
        ServerHandshake(secret).feed(intruder.feed(ServerHandshake(secret).hello))
    impostor = ServerHandshake(new_secret())
    honest = ClientHandshake(secret)
    honest.feed(impostor.hello)
    with pytest.raises(AuthError, match="server's proof"):
        honest.feed(bytes(32))


def test_a_recorded_answer_is_useless_on_another_connection() -> None:
    secret = new_secret()
    first = ServerHandshake(secret)
    recorded = ClientHandshake(secret).feed(first.hello)
    first.feed(recorded)
    second = ServerHandshake(secret)
    assert second.hello != first.hello
    with pytest.raises(AuthError):
        second.feed(recorded)


def test_a_servers_proof_is_no_clients_answer() -> None:
    secret = new_secret()
    victim, other = ServerHandshake(secret), ServerHandshake(secret)
    victim_nonce, other_nonce = victim.hello[len(MAGIC) :], other.hello[len(MAGIC) :]
    # Reflection: a proof a server gives on another connection whose client nonce was the victim's
    # challenge carries the MAC of the very bytes the victim checks, under the other role's label.
    proof = hmac.new(secret, b"server" + MAGIC + victim_nonce + other_nonce, hashlib.sha256).digest()
    with pytest.raises(AuthError, match="client's answer"):
        victim.feed(other_nonce + proof)


def test_only_the_fixed_handshake_sizes_are_accepted() -> None:
    secret = new_secret()
    with pytest.raises(AuthError, match="more bytes"):
        ServerHandshake(secret).feed(bytes(65))
    client = ClientHandshake(secret)
    with pytest.raises(AuthError, match="protocol"):
        client.feed(b"HTTP/1.1" + bytes(HELLO - 8))
    with pytest.raises(AuthError, match="before the answer"):
        ClientHandshake(secret).feed(ServerHandshake(secret).hello + bytes(32))


def test_connections_beyond_the_handshake_limit_are_closed_at_once(monkeypatch) -> None:
    monkeypatch.setattr(fastpath, "MAX_PENDING", 3)

    async def main() -> None:
        server = FastServer({}, "127.0.0.1", settings=FastSettings(handshake_timeout=30))
        port = await server.start()
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        try:
            greeted = [await asyncio.wait_for(reader.read(HELLO), 10) for reader, _ in streams]
            assert [len(g) for g in greeted] == [HELLO] * 3 + [0] * 2
            assert (server.refused, server._pending) == (2, 3)
        finally:
            for _, writer in streams:
                writer.close()
            server.close()
        assert server._pending == 0

    asyncio.run(main())


def test_a_server_without_the_secret_never_gets_a_request() -> None:
    async def main() -> None:
        received: list[bytes] = []
        finished = asyncio.Event()

        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(MAGIC + os.urandom(32))
            received.append(await reader.readexactly(64))
            writer.write(os.urandom(32))  # a proof made without the secret
            received.append(await reader.read(65536))  # what a fooled client would send next
            writer.close()
            finished.set()

        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(AuthError, match="server's proof"):
            await open_connection("127.0.0.1", port, new_secret(), settings=FastSettings(handshake_timeout=10))
        await asyncio.wait_for(finished.wait(), 10)
        server.close()
        assert [len(r) for r in received] == [64, 0], "the handshake answer, then nothing"

    asyncio.run(main())


# -- against a real worker ------------------------------------------------------------------------


def triple(row):
    return row["x"] * 3


@pytest.fixture(scope="module")
def target() -> Iterator[tuple[cf.LocalCluster, Any]]:
    """A one-worker cluster whose workers give a handshake one second, serving a deployment."""
    with dask.config.set({"cloudflow.fastpath.handshake-timeout": HANDSHAKE_TIMEOUT}):
        cluster = cf.LocalCluster(workers=1, gpu_workers=0, dashboard=False)
    with cluster, cluster.deploy(cf.Flow("target", x=int).map(triple, names={"y": int})) as dep:
        assert dep.predict({"x": 1})[0]["y"] == 3
        yield cluster, dep


def _fast_info(dask_worker: Any) -> dict[str, Any]:
    fast = dask_worker.plugins["cloudflow"].fast
    return {"port": fast.port, "key": fast.key, "pid": os.getpid(), "refused": fast.refused}


def _worker(cluster: cf.LocalCluster) -> dict[str, Any]:
    (info,) = cluster.client.run(_fast_info).values()
    assert info["port"] is not None
    return info


def _exploit(marker: Path) -> bytes:
    """A frame whose unpickling runs ``touch marker`` (what the fast path accepted before)."""

    class Exploit:
        def __reduce__(self) -> Any:
            return os.system, (f"touch {marker}",)

    return b"".join(encode_frame(1, ("cf_call", {"replica": Exploit()})))


def _lying_frame(marker: Path, count: int, lengths: list[int]) -> bytes:
    """The exploit's pickle in a frame whose buffer table claims ``count`` buffers of ``lengths``."""
    frame = _exploit(marker)
    _, pickled = struct.unpack_from("!IQ", frame, HEADER.size)
    body = frame[HEADER.size + 12 : HEADER.size + 12 + pickled]
    payload = struct.pack("!IQ", count, pickled) + body + b"".join(struct.pack("!Q", n) for n in lengths) + bytes(64)
    return HEADER.pack(len(payload), 1) + payload


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the peer closes ``sock`` within ``within`` seconds (what it sends is read and dropped)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def _member_answer(key: bytes, hello: bytes, nonce: bytes) -> bytes:
    """What a cluster member answers a hello (magic + server nonce) with: its nonce and the MAC."""
    return nonce + hmac.new(key, b"client" + hello + nonce, hashlib.sha256).digest()


def _still_serves(dep: Any) -> None:
    fast = dep._router.fast
    before = fast.calls
    assert [dep.predict({"x": i})[0]["y"] for i in range(5)] == [0, 3, 6, 9, 12]
    assert fast.calls >= before + 5


@pytest.mark.cluster
@pytest.mark.slow
def test_a_pickle_without_a_handshake_never_runs(target, tmp_path) -> None:
    cluster, dep = target
    info = _worker(cluster)
    marker = tmp_path / "pwned-plain"
    with _connect(info["port"]) as sock:
        sock.sendall(_exploit(marker))
        assert _closed_by_peer(sock, 10)
    with _connect(info["port"]) as sock:  # wrong MAC, then the exploit
        assert _recv_exact(sock, HELLO).startswith(MAGIC)
        sock.sendall(os.urandom(64) + _exploit(marker))
        assert _closed_by_peer(sock, 10)
    time.sleep(0.5)
    assert not marker.exists()
    assert _worker(cluster)["refused"] >= info["refused"] + 2
    _still_serves(dep)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_replayed_handshake_never_runs_a_pickle(target, tmp_path) -> None:
    cluster, dep = target
    info = _worker(cluster)
    marker = tmp_path / "pwned-replay"
    with _connect(info["port"]) as member:  # a member's real handshake, recorded
        hello = _recv_exact(member, HELLO)
        answer = _member_answer(info["key"], hello, os.urandom(32))
        member.sendall(answer)
        assert len(_recv_exact(member, 32)) == 32
    with _connect(info["port"]) as sock:
        assert _recv_exact(sock, HELLO) != hello
        sock.sendall(answer + _exploit(marker))
        assert _closed_by_peer(sock, 10)
    time.sleep(0.5)
    assert not marker.exists()
    _still_serves(dep)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_header_claiming_2gib_allocates_nothing(target) -> None:
    cluster, dep = target
    info = _worker(cluster)
    process = psutil.Process(info["pid"])
    before = process.memory_info().rss
    with _connect(info["port"]) as sock:  # even a member that knows the secret
        hello = _recv_exact(sock, HELLO)
        sock.sendall(_member_answer(info["key"], hello, os.urandom(32)))
        _recv_exact(sock, 32)
        sock.sendall(struct.pack("!QQ", 2 << 30, 1) + b"x" * 1000)
        assert _closed_by_peer(sock, 10)
    with _connect(info["port"]) as sock:  # and a stranger
        sock.sendall(struct.pack("!QQ", 2 << 30, 1))
        assert _closed_by_peer(sock, 10)
    assert process.memory_info().rss - before < 256 * 2**20
    _still_serves(dep)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_frame_whose_buffer_table_lies_is_refused_before_unpickling(target, tmp_path) -> None:
    cluster, dep = target
    info = _worker(cluster)
    process = psutil.Process(info["pid"])
    before = process.memory_info().rss
    marker = tmp_path / "pwned-buffers"
    lies = [
        _lying_frame(marker, 2**32 - 1, []),  # more buffers than any frame may hold
        _lying_frame(marker, 2, [8]),  # a buffer table past the end of the frame
        _lying_frame(marker, 1, [2**40]),  # a 1 TiB buffer in a frame of a few hundred bytes
        _lying_frame(marker, 1, [8]),  # bytes the table does not account for
    ]
    for frame in lies:
        with _connect(info["port"]) as sock:  # a member that knows the secret
            hello = _recv_exact(sock, HELLO)
            sock.sendall(_member_answer(info["key"], hello, os.urandom(32)))
            _recv_exact(sock, 32)
            sock.sendall(frame)
            assert _closed_by_peer(sock, 10)
    time.sleep(0.5)
    assert not marker.exists()
    assert _worker(cluster)["refused"] >= info["refused"] + len(lies)
    assert process.memory_info().rss - before < 64 * 2**20
    _still_serves(dep)


@pytest.mark.cluster
@pytest.mark.slow
def test_garbage_and_a_slow_loris_are_dropped_after_the_time_limit(target) -> None:
    cluster, dep = target
    info = _worker(cluster)
    with _connect(info["port"]) as silent, _connect(info["port"]) as garbage, _connect(info["port"]) as trickle:
        garbage.sendall(b"GET / HTTP/1.1\r\n")
        trickle.sendall(b"\x00")
        assert _closed_by_peer(silent, 10)
        assert _closed_by_peer(garbage, 10)
        assert _closed_by_peer(trickle, 10)
    assert _worker(cluster)["refused"] >= info["refused"] + 3
    _still_serves(dep)


@pytest.mark.cluster
@pytest.mark.slow
def test_a_tls_cluster_keeps_the_fast_path(tmp_path) -> None:
    security = Security.temporary()
    with cf.LocalCluster(workers=1, gpu_workers=0, dashboard=False, security=security) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        with cluster.deploy(cf.Flow("tls", x=int).map(triple, names={"y": int})) as dep:
            fast = dep._router.fast
            assert [f.result(60)[0]["y"] for f in [dep.submit({"x": i}) for i in range(50)]] == [
                3 * i for i in range(50)
            ]
            assert (fast.calls >= 50, fast.fallbacks) == (True, 0)
            info = _worker(cluster)
            marker = tmp_path / "pwned-tls"
            with _connect(info["port"]) as sock:  # plain TCP against the TLS fast port
                sock.sendall(_exploit(marker))
                assert _closed_by_peer(sock, 15)
            time.sleep(0.5)
            assert not marker.exists()
            assert dep.predict({"x": 7})[0]["y"] == 21
            assert (fast.calls >= 51, fast.fallbacks) == (True, 0)
        later = cf.connect(cluster.scheduler_address, security=security)  # a client attaching later
        with later, later.deploy(cf.Flow("tls2", x=int).map(triple, names={"y": int})) as dep:
            assert [dep.predict({"x": i})[0]["y"] for i in range(5)] == [0, 3, 6, 9, 12]
            assert (dep._router.fast.calls >= 5, dep._router.fast.fallbacks) == (True, 0)

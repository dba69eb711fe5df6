"""A replica's queue on its own (no cluster): cancelled requests never run."""

from __future__ import annotations

import asyncio
import threading

import cloudflow_nb as cf
from cloudflow_nb.runtime.replica import Replica, StageSpec
from cloudflow_nb.table import Table

GATE = threading.Event()
RAN: list[int] = []


def gated(row):
    GATE.wait(5)
    RAN.append(row["x"])
    return row["x"]


def _replica() -> tuple[Replica, object]:
    (stage,) = cf.Flow("gate", x=int).map(gated, names={"y": int}).optimize(False).stages
    replica = Replica(StageSpec(stage.name, stage.program), "cpu", {})
    return replica, stage.program.children[0].schema


def test_cancel_drops_queued_calls_and_calls_that_arrive_later():
    async def scenario():
        replica, schema = _replica()
        rows = [Table(schema, [{"qid": 0, "x": x}]) for x in range(3)]
        running = asyncio.ensure_future(replica.call("r0", [rows[0]], timeout=5))
        queued = asyncio.ensure_future(replica.call("r1", [rows[1]], timeout=5))
        await asyncio.sleep(0.05)
        replica.cancel({"r1", "r2"})
        late = await replica.call("r2", [rows[2]], timeout=5)
        GATE.set()
        results = await asyncio.gather(running, queued)
        replica.close()
        return late, results

    GATE.clear()
    RAN.clear()
    late, (running, queued) = asyncio.run(scenario())
    assert late == ("cancelled", 0)
    assert queued == ("cancelled", 0)
    assert running[0].column("y") == [0]
    assert RAN == [0]


def test_a_cancelled_concurrent_call_frees_its_slot_for_the_very_next_call():
    """The router counts a race loser's slot free once its cancel is sent, so the call sent right
    behind the cancel must find the room, before the cancelled call's own task has resumed."""

    async def scenario():
        (stage,) = cf.Flow("gate", x=int).map(gated, names={"y": int}, releases_gil=True).optimize(False).stages
        replica = Replica(StageSpec(stage.name, stage.program, max_inflight=1, concurrent=True), "cpu", {})
        schema = stage.program.children[0].schema
        rows = [Table(schema, [{"qid": 0, "x": x}]) for x in range(2)]
        loser = asyncio.ensure_future(replica.call("r0", [rows[0]], timeout=5))
        await asyncio.sleep(0.05)
        # as a server reading both frames at once does: the cancel runs, then the call starts, and
        # only then does the cancelled call's own task resume
        asyncio.get_running_loop().call_soon(replica.cancel, {"r0"})
        nxt = asyncio.ensure_future(replica.call("r1", [rows[1]], timeout=5))
        GATE.set()
        results = await asyncio.gather(loser, nxt)
        replica.close()
        return results

    GATE.clear()
    RAN.clear()
    loser, nxt = asyncio.run(scenario())
    assert loser == ("cancelled", 0)
    assert nxt != ("overload", 0)
    assert nxt[0].column("y") == [1]

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

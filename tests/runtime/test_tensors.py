"""CPU torch tensors on the wire: numpy views of their memory, out of band in fast-path frames and
in Dask's own frames, and tensors again on arrival (dtype, shape and values kept)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from distributed.protocol import dumps as dask_dumps
from distributed.protocol import loads as dask_loads

import cloudflow_nb as cf
from cloudflow_nb.runtime.frames import FrameReader, encode_frame
from cloudflow_nb.runtime.wire import TensorView, decode_table, encode_table

torch = pytest.importorskip("torch")  # an optional extra
torch.set_num_threads(1)

SCHEMA = cf.Schema({"t": torch.Tensor})


def _through_a_frame(rows: Any) -> Any:
    (frame,) = FrameReader().feed(b"".join(encode_frame(1, {"rows": rows})))
    return frame.load()["rows"]


TENSORS = {
    "float32": lambda: torch.arange(130_000, dtype=torch.float32).reshape(260, 500),
    "int64": lambda: torch.arange(70_000),
    "float16": lambda: torch.linspace(-1, 1, 9000, dtype=torch.float16),
    "bool": lambda: torch.arange(9000) % 2 == 0,
    "uint8 image": lambda: torch.randint(0, 255, (3, 224, 224), dtype=torch.uint8),
    "transposed": lambda: torch.arange(60_000, dtype=torch.float64).reshape(200, 300).t(),
    "sliced": lambda: torch.arange(100_000, dtype=torch.int32)[::7],
    "zero-size": lambda: torch.zeros(0, 3),
    "scalar": lambda: torch.tensor(2.5),
    "bfloat16 (torch's own pickling)": lambda: torch.arange(5000, dtype=torch.bfloat16),
    "requires grad (torch's own pickling)": lambda: torch.ones(4000, requires_grad=True),
}


@pytest.mark.parametrize("name", list(TENSORS))
def test_tensors_round_trip_with_their_dtype_shape_and_values(name: str) -> None:
    tensor = TENSORS[name]()
    table = cf.Table(SCHEMA, [{"qid": 0, "t": tensor}, {"qid": 1, "t": tensor}])
    for row in decode_table(SCHEMA, _through_a_frame(encode_table(table))):
        got = row["t"]
        assert type(got) is torch.Tensor
        assert (got.dtype, got.shape, got.requires_grad) == (tensor.dtype, tensor.shape, tensor.requires_grad)
        assert torch.equal(got.detach(), tensor.detach())


def test_cpu_tensors_travel_as_numpy_views_of_their_memory() -> None:
    tensor = torch.arange(200_000, dtype=torch.float32)
    view = TensorView.of(tensor)
    assert isinstance(view, TensorView)
    assert np.shares_memory(view.array, tensor.numpy())
    assert TensorView.of(torch.ones(3, requires_grad=True)).__class__ is torch.Tensor
    head, buffer = encode_frame(1, {"rows": encode_table(cf.Table(SCHEMA, [{"qid": 0, "t": tensor}]))})
    assert memoryview(head).nbytes < 1000
    assert np.shares_memory(np.frombuffer(buffer, dtype=np.float32), tensor.numpy())


def test_a_received_tensor_is_its_receivers_to_write() -> None:
    sent = torch.ones(9000)
    rows = _through_a_frame(encode_table(cf.Table(SCHEMA, [{"qid": 0, "t": sent}, {"qid": 1, "t": sent}])))
    first, second = (row["t"] for row in decode_table(SCHEMA, rows))
    first.add_(1)  # writable, without a warning about read-only memory
    assert float(first.sum()) == 18000
    assert float(second.sum()) == float(sent.sum()) == 9000


def test_dask_comms_carry_tensors_in_frames_of_their_own() -> None:
    tensor = torch.from_numpy(np.random.default_rng(2).random(50_000))  # incompressible
    frames = dask_dumps({"rows": encode_table(cf.Table(SCHEMA, [{"qid": 0, "t": tensor}]))})
    sizes = sorted(memoryview(f).nbytes for f in frames)
    assert sizes[-1] == tensor.nbytes
    assert sum(sizes[:-1]) < 10_000
    got = decode_table(SCHEMA, dask_loads([bytearray(f) for f in frames])["rows"])[0]["t"]
    assert type(got) is torch.Tensor
    assert torch.equal(got, tensor)


def test_a_view_that_was_never_pickled_becomes_its_tensor() -> None:
    tensor = torch.arange(10_000, dtype=torch.float32)
    encoded = encode_table(cf.Table(SCHEMA, [{"qid": 0, "t": tensor}]))  # as in-process workers get it
    got = decode_table(SCHEMA, encoded.data)[0]["t"]
    assert type(got) is torch.Tensor
    assert torch.equal(got, tensor)

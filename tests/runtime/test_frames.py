"""Fast-path frames without a cluster: framing however the stream is cut, arrays out of band (no
copies either way, safe from a sender that goes on writing), and frames that lie. Tensors:
test_tensors.py."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
from distributed.protocol import dumps as dask_dumps
from distributed.protocol import loads as dask_loads
from distributed.protocol.serialize import to_serialize

import cloudflow_nb as cf
from cloudflow_nb.runtime.frames import (
    ALIGN,
    HEADER,
    MAX_BUFFERS,
    SCRATCH,
    FrameError,
    FrameReader,
    FrameTooLarge,
    encode_frame,
    frame_size,
    write_frame,
)
from cloudflow_nb.runtime.wire import decode_table, encode_table


def _stream(*messages: tuple[int, Any]) -> bytes:
    return b"".join(b"".join(encode_frame(rid, obj)) for rid, obj in messages)


def _one(obj: Any) -> Any:
    (frame,) = FrameReader().feed(_stream((1, obj)))
    return frame.load()


# -- framing --------------------------------------------------------------------------------------


def test_frames_round_trip_however_the_stream_is_cut() -> None:
    messages = [(1, ("cf_call", {"x": 1})), (2, (True, {"rows": [[1, "a"]]})), (7, (False, ValueError("no")))]
    stream = _stream(*messages)
    whole = FrameReader().feed(stream)
    reader = FrameReader()
    bytewise = [frame for i in range(len(stream)) for frame in reader.feed(stream[i : i + 1])]
    for frames in (whole, bytewise):
        assert [f.rid for f in frames] == [1, 2, 7]
        decoded = [f.load() for f in frames]
        assert decoded[:2] == [obj for _, obj in messages[:2]]
        assert isinstance(decoded[2][1], ValueError)
    assert FrameReader().feed(stream[:5]) == []


def test_a_large_frame_cut_anywhere_arrives_whole() -> None:
    blob, array = bytes(range(256)) * 4000, np.arange(300_000, dtype=np.int32)
    stream = _stream((1, blob), (2, "next"), (3, array), (4, [array[:10], array]))
    for cuts in ([3, 40, 300_000], [16, 17, len(stream) - 30], [1_024_005], range(1, len(stream), 65_537)):
        reader = FrameReader()
        bounds = [0, *cuts, len(stream)]
        frames = [f for a, b in itertools.pairwise(bounds) for f in reader.feed(stream[a:b])]
        assert [f.rid for f in frames] == [1, 2, 3, 4]
        assert frames[0].load() == blob
        assert frames[1].load() == "next"
        np.testing.assert_array_equal(frames[2].load(), array)
        small, big = frames[3].load()
        np.testing.assert_array_equal(big, array)
        np.testing.assert_array_equal(small, array[:10])


def test_a_header_over_the_cap_is_refused_before_its_buffer_is_made() -> None:
    reader = FrameReader(max_frame=1000)
    assert [f.rid for f in reader.feed(_stream((1, b"x" * 900)))] == [1]
    claim = HEADER.pack(2 << 30, 2)  # 2 GiB claimed, nothing sent
    with pytest.raises(FrameTooLarge, match="2147483648 bytes"):
        reader.feed(claim)
    assert reader._frame is None


def test_serialized_values_arrive_unwrapped() -> None:
    array = np.arange(5)
    rows = _one({"rows": to_serialize([[array, (1, 2)]])})["rows"]
    assert rows[0][1] == (1, 2)
    np.testing.assert_array_equal(rows[0][0], array)


# -- arrays and tensors out of band ---------------------------------------------------------------


def test_a_large_array_is_sent_from_its_own_memory_and_arrives_as_a_view_of_its_frame() -> None:
    array = np.random.default_rng(0).random(64_000)  # 512 KB
    pieces = encode_frame(5, (True, {"rows": to_serialize([[1, array]])}))
    assert len(pieces) == 2
    assert np.shares_memory(np.frombuffer(pieces[1], dtype=np.float64), array)
    assert memoryview(pieces[0]).nbytes < 1000, "the array is not inside the pickle"
    (frame,) = FrameReader().feed(b"".join(pieces))
    assert frame_size(pieces) == len(b"".join(pieces)) - HEADER.size
    (buffer,) = frame.buffers
    got = frame.load()[1]["rows"][0][1]
    np.testing.assert_array_equal(got, array)
    assert np.shares_memory(got, np.frombuffer(buffer, dtype=np.uint8)), "no copy on the way in"
    assert got.flags.writeable
    start = np.frombuffer(frame.data.obj, dtype=np.uint8).ctypes.data  # the frame's own buffer
    assert (got.ctypes.data - start) % ALIGN == 0


ARRAYS = {
    "float32 matrix": np.arange(120_000, dtype=np.float32).reshape(300, 400),
    "fortran order": np.asfortranarray(np.arange(60_000, dtype=np.float64).reshape(200, 300)),
    "non-contiguous": np.arange(200_000, dtype=np.int64)[::3],
    "transposed view": np.arange(50_000, dtype=np.int16).reshape(250, 200).T,
    "zero-size": np.zeros((0, 7), dtype=np.float64),
    "zero-d": np.array(3.5),
    "bool": np.arange(10_000) % 3 == 0,
    "complex": np.arange(5000, dtype=np.complex128) * (1 + 2j),
    "big-endian": np.arange(3000, dtype=">u4"),
    "datetime": np.arange(6000).astype("datetime64[s]"),
    "int8 small": np.arange(10, dtype=np.int8),
    "object": np.array([1, "a", None], dtype=object),
}


@pytest.mark.parametrize("name", list(ARRAYS))
def test_arrays_round_trip_with_their_dtype_shape_and_values(name: str) -> None:
    array = ARRAYS[name]
    schema = cf.Schema({"a": np.ndarray})
    table = cf.Table(schema, [{"qid": 0, "a": array}])
    got = decode_table(schema, _one({"rows": encode_table(table)})["rows"])[0]["a"]
    assert (got.dtype, got.shape) == (array.dtype, array.shape)
    np.testing.assert_array_equal(got, array)


def test_received_values_own_their_memory() -> None:
    array = np.arange(100_000, dtype=np.float64)
    stream = _stream((1, {"a": to_serialize(array)}), (2, {"a": to_serialize(array)}))
    first, second = (f.load()["a"] for f in FrameReader().feed(stream))
    assert not np.shares_memory(first, second)
    first[:] = -1  # the receiver may write to what it got; nothing else sees it
    np.testing.assert_array_equal(second, array)


def test_dask_comms_carry_rows_with_the_buffers_beside_the_message() -> None:
    schema = cf.Schema({"a": np.ndarray, "b": np.ndarray})
    rng = np.random.default_rng(1)  # incompressible: Dask sends it as it is
    a, b = rng.random(100_000), rng.random(50_000)
    frames = dask_dumps({"rows": encode_table(cf.Table(schema, [{"qid": 0, "a": a, "b": b}]))})
    sizes = sorted(memoryview(f).nbytes for f in frames)
    assert sizes[-2:] == [400_000, 800_000], "each buffer in a frame of its own"
    assert sum(sizes[:-2]) < 10_000
    row = decode_table(schema, dask_loads([bytearray(f) for f in frames])["rows"])[0]
    np.testing.assert_array_equal(row["a"], a)
    np.testing.assert_array_equal(row["b"], b)


def test_a_sender_that_goes_on_writing_never_changes_what_was_sent() -> None:
    array = np.arange(2_000_000, dtype=np.float64)  # 16 MB: far more than the socket buffers hold
    expected = array.copy()

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
        write_frame(transport, encode_frame(9, {"a": to_serialize(array)}))
        assert transport.get_write_buffer_size() > 0, "the peer has not read yet"
        array[:] = -1  # the sender goes on changing its array
        reader = FrameReader()
        frames = []
        for _ in range(10_000):
            data = await loop.sock_recv(theirs, 1 << 20)
            frames += reader.feed(data)
            if frames:
                break
        transport.close()
        theirs.close()
        return frames[0].load()["a"]

    np.testing.assert_array_equal(asyncio.run(main()), expected)


# -- frames that lie ------------------------------------------------------------------------------


def _frame(count: int, pickle_length: int, lengths: list[int], body: int) -> bytes:
    payload = struct.pack("!IQ", count, pickle_length) + bytes(pickle_length)
    payload += b"".join(struct.pack("!Q", n) for n in lengths) + bytes(body)
    return HEADER.pack(len(payload), 1) + payload


LIES = {
    "more buffers than any frame may hold": _frame(MAX_BUFFERS + 1, 4, [8] * (MAX_BUFFERS + 1), 0),
    "2**32 - 1 buffers": _frame(2**32 - 1, 4, [], 64),
    "a buffer table past the end": _frame(50, 4, [1], 0),
    "a pickle longer than the frame": HEADER.pack(22, 1) + struct.pack("!IQ", 0, 2**40) + bytes(10),
    "a buffer longer than the frame": _frame(1, 4, [2**62], 100),
    "bytes the table does not account for": _frame(1, 4, [8], 200),
    "a payload too short for its table": HEADER.pack(3, 1) + b"abc",
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_frame_whose_buffer_table_lies_is_refused_before_unpickling(lie: str) -> None:
    stream = LIES[lie]
    tracemalloc.start()
    try:
        with pytest.raises(FrameError):
            FrameReader(max_frame=1 << 20).feed(stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(stream) + 4 * SCRATCH, f"{peak} bytes allocated for a {len(stream)}-byte frame"


def test_each_buffer_of_a_frame_starts_aligned() -> None:
    odd, wide = np.arange(5001, dtype=np.uint16), np.arange(7000, dtype=np.float64)  # 10002 bytes, then 56000
    (frame,) = FrameReader().feed(b"".join(encode_frame(2, [odd, wide, odd[::2]])))
    assert [b.nbytes for b in frame.buffers] == [odd.nbytes, wide.nbytes], "the strided view stays in the pickle"
    start = np.frombuffer(frame.data.obj, dtype=np.uint8).ctypes.data
    got = frame.load()
    for sent, arrived in zip([odd, wide, odd[::2]], got, strict=True):
        np.testing.assert_array_equal(arrived, sent)
    assert [(a.ctypes.data - start) % ALIGN for a in got[:2]] == [0, 0]

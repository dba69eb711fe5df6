"""Fast-path frames: a pickle with its large buffers beside it, sent and received without copies.

A frame is a 16-byte header (payload length, request id) and a payload::

    buffer count (u32) | pickle length (u64) | pickle | buffer lengths (u64 each) | buffers

Values are pickled with protocol 5: a contiguous numpy array (or a CPU torch tensor, which
:mod:`~cloudflow_nb.runtime.wire` sends as a numpy view) of at least :data:`OUT_OF_BAND_MIN`
bytes is not copied into the pickle but travels as a buffer of its own, each starting at a
multiple of :data:`ALIGN` bytes from the frame's start. The sender writes the pickle and then
each buffer straight from the array's memory (:func:`write_frame`); the receiver reads a frame
larger than its scratch space straight into one buffer made for it (:class:`FrameReader`, an
``asyncio.BufferedProtocol`` helper) and the arrays it unpickles are views of that buffer, which
belongs to them alone. Values wrapped in Dask's ``to_serialize`` go through Dask's pickler
(which falls back to cloudpickle) with their buffers out of band too.

Hostile input: a header claiming more than ``max_frame`` bytes is refused before any buffer is
made; a buffer table that lies (more than :data:`MAX_BUFFERS` buffers, lengths that overrun the
frame or leave bytes over) raises :class:`FrameError` before anything is unpickled and before
anything beyond the frame's own (capped) buffer is made.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from distributed.protocol import pickle as dask_pickle
from distributed.protocol.serialize import Serialize

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "ALIGN",
    "HEADER",
    "MAX_BUFFERS",
    "OUT_OF_BAND_MIN",
    "Frame",
    "FrameError",
    "FrameReader",
    "FrameTooLarge",
    "encode_frame",
    "frame_size",
    "write_frame",
]

HEADER = struct.Struct("!QQ")  # payload length, request id
TABLE = struct.Struct("!IQ")  # buffer count, pickle length
LENGTH = struct.Struct("!Q")
_START = struct.Struct("!QQIQ")  # the header and the buffer table's start, packed at once
_BLANK = bytes(_START.size)
ALIGN = 64  # bytes: where each out-of-band buffer starts, counted from the frame's start
OUT_OF_BAND_MIN = 4096  # bytes: smaller buffers are cheaper inside the pickle
MAX_BUFFERS = 1024  # out-of-band buffers in one frame (more stay inside the pickle)
SCRATCH = 64 * 1024  # bytes read at once while no large frame is being filled
# Python 3.12's socket transport keeps a view of what it could not send at once (3.10 and 3.11
# copy it): there, a buffer is copied before it is written, so a sender that goes on changing
# its array never changes what was sent.
_SNAPSHOT = sys.version_info >= (3, 12)

Piece = bytes | bytearray | memoryview


class FrameTooLarge(ValueError):
    """A frame over the fast path's ``max-frame`` cap (refused before its buffer is made)."""


class FrameError(ValueError):
    """A frame whose buffer table does not describe its payload (refused before unpickling)."""


class Frame(NamedTuple):
    """One received frame: its request id, its pickle and its out-of-band buffers."""

    rid: int
    data: memoryview
    buffers: tuple[memoryview, ...] = ()

    def load(self) -> Any:
        """The pickled value (its arrays are views of this frame's buffer)."""
        return pickle.loads(self.data, buffers=self.buffers)


def _padding(offset: int) -> int:
    return -offset % ALIGN


def _load_serialized(data: bytes, *buffers: Any) -> Any:
    return dask_pickle.loads(data, buffers=buffers)


def _unwrap(obj: Serialize) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """A ``to_serialize`` value through Dask's pickler; its buffers become the frame's buffers."""
    buffers: list[pickle.PickleBuffer] = []
    data = dask_pickle.dumps(obj.data, protocol=5, buffer_callback=buffers.append)
    return _load_serialized, (data, *buffers)


class _Pickler(pickle.Pickler):
    dispatch_table = {Serialize: _unwrap}


def encode_frame(rid: int, obj: Any) -> list[Piece]:
    """``obj`` as the pieces of one frame with id ``rid``: the header and pickle, then each
    out-of-band buffer (a view of the value's own memory) after the padding that aligns it."""
    buffers: list[memoryview] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND_MIN or len(buffers) >= MAX_BUFFERS:
            return True  # stays inside the pickle
        buffers.append(raw)
        return False

    head = io.BytesIO()
    head.write(_BLANK)
    _Pickler(head, protocol=5, buffer_callback=out_of_band).dump(obj)
    if not buffers:  # the common case: one piece
        first = head.getbuffer()
        _START.pack_into(first, 0, len(first) - HEADER.size, rid, 0, len(first) - _START.size)
        return [first]
    pickled = head.tell() - _START.size
    for buf in buffers:
        head.write(LENGTH.pack(buf.nbytes))
    pieces: list[Piece] = []
    offset = head.tell()
    for buf in buffers:
        pad = _padding(offset)
        if not pieces:
            head.write(bytes(pad))
        elif pad:
            pieces.append(bytes(pad))
        pieces.append(buf)
        offset += pad + buf.nbytes
    first = head.getbuffer()
    HEADER.pack_into(first, 0, offset - HEADER.size, rid)
    TABLE.pack_into(first, HEADER.size, len(buffers), pickled)
    return [first, *pieces]


def frame_size(pieces: list[Piece]) -> int:
    """The payload length of a frame :func:`encode_frame` made (what its header announces)."""
    return int(HEADER.unpack_from(pieces[0])[0])


def write_frame(transport: asyncio.WriteTransport, pieces: list[Piece]) -> None:
    """Write a frame's pieces in order, each from its own memory (no joined copy)."""
    transport.write(pieces[0])
    if len(pieces) > 1:
        for piece in pieces[1:]:
            transport.write(bytes(piece) if _SNAPSHOT else piece)


def split_frame(frame: bytearray | memoryview) -> Frame:
    """The :class:`Frame` in ``frame`` (header included); :class:`FrameError` when its buffer table lies."""
    view = memoryview(frame)
    end = len(view)
    if end < _START.size:
        raise FrameError(f"a frame of {end - HEADER.size} bytes is too short for its buffer table")
    size, rid, count, pickled = _START.unpack_from(view)
    if size != end - HEADER.size:
        raise FrameError(f"a frame of {end - HEADER.size} bytes announced {size}")
    start = _START.size
    table = start + pickled
    if count == 0 and table == end:  # the common case: no buffers
        return Frame(rid, view[start:])
    if count > MAX_BUFFERS or table + count * LENGTH.size > end:
        raise FrameError(f"a frame of {size} bytes cannot hold {count} buffers after a {pickled}-byte pickle")
    offset = table + count * LENGTH.size
    buffers = []
    for i in range(count):
        (length,) = LENGTH.unpack_from(view, table + i * LENGTH.size)
        offset += _padding(offset)
        if offset + length > end:
            raise FrameError(f"buffer {i} of {length} bytes runs past the end of its {size}-byte frame")
        buffers.append(view[offset : offset + length])
        offset += length
    if offset != end:
        raise FrameError(f"a frame of {size} bytes has {end - offset} bytes its buffer table does not account for")
    return Frame(rid, view[start:table], tuple(buffers))


class FrameReader:
    """Splits a byte stream into :class:`Frame` objects, however the stream was cut.

    Reads land in :meth:`get_buffer` (an ``asyncio.BufferedProtocol`` hands it to the socket):
    a scratch space while headers and small frames arrive, then, once a header announces a frame
    larger than the scratch space, that frame's own buffer, so its bytes are read there directly.
    Small frames are copied out of the scratch space (they must outlive it).

    Parameters
    ----------
    max_frame : int
        The largest payload accepted: a header claiming more raises :class:`FrameTooLarge`
        before any buffer is made.
    """

    def __init__(self, max_frame: int = 256 * 2**20) -> None:
        self.max_frame = max_frame
        self._scratch = bytearray(SCRATCH)
        self._view = memoryview(self._scratch)  # never resized: the view stays valid
        self._start = 0  # scratch[start:end] holds bytes not yet part of a complete frame
        self._end = 0
        self._frame: bytearray | None = None  # a large frame being filled, header included
        self._filled = 0

    def get_buffer(self) -> memoryview:
        """Where the next bytes should be read to (never empty)."""
        if self._frame is not None:
            return memoryview(self._frame)[self._filled :]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """``nbytes`` were read into the last :meth:`get_buffer`: the frames now complete."""
        if self._frame is not None:
            self._filled += nbytes
            if self._filled < len(self._frame):
                return []
            frame, self._frame = self._frame, None
            return [split_frame(frame)]
        self._end += nbytes
        if self._start == 0 and self._end >= _START.size:  # the common case: one whole frame, no buffers
            size, rid, count, pickled = _START.unpack_from(self._scratch)
            total = HEADER.size + size
            if total == self._end and count == 0 and pickled == total - _START.size and size <= self.max_frame:
                self._end = 0
                return [Frame(rid, memoryview(self._scratch[_START.size : total]))]
        return self._split()

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        """Add bytes received elsewhere: the frames now complete."""
        view = memoryview(data).cast("B")
        frames: list[Frame] = []
        while view.nbytes:
            target = self.get_buffer()
            n = min(target.nbytes, view.nbytes)
            target[:n] = view[:n]
            view = view[n:]
            frames += self.buffer_updated(n)
        return frames

    def _split(self) -> list[Frame]:
        scratch = self._scratch
        frames = []
        while self._end - self._start >= HEADER.size:
            size, _ = HEADER.unpack_from(scratch, self._start)
            if size > self.max_frame:
                raise FrameTooLarge(f"a frame of {size} bytes is over the fast path's cap of {self.max_frame}")
            total = HEADER.size + size
            have = self._end - self._start
            if have >= total:
                frames.append(self._small(self._start, total))
                self._start += total
                continue
            if total > len(scratch):  # read the rest straight into the frame's own buffer
                self._frame = bytearray(total)
                self._frame[:have] = self._view[self._start : self._end]
                self._filled = have
                self._start = self._end = 0
            break
        if self._start:  # keep the incomplete rest at the front
            rest = self._end - self._start
            scratch[:rest] = scratch[self._start : self._end]  # a copy: the two may overlap
            self._start, self._end = 0, rest
        return frames

    def _small(self, start: int, total: int) -> Frame:
        """The complete frame of ``total`` bytes at ``start`` in the scratch space, copied out."""
        scratch = self._scratch
        if total >= _START.size:
            _, rid, count, pickled = _START.unpack_from(scratch, start)
            if count == 0 and pickled == total - _START.size:  # no buffers: copy the pickle alone
                return Frame(rid, memoryview(scratch[start + _START.size : start + total]))
        return split_frame(scratch[start : start + total])

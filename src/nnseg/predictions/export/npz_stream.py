"""``.npz`` files written as a stream, compressed on every core: nnU-Net's probability files without their cost.

nnU-Net writes ``CASE.npz`` with ``np.savez_compressed`` (zlib level 6 on one core, the whole array in memory).
For a 118-class whole-body CT that is 50 GB of float32: zlib level 1 manages ~45 MB/s on softmax values, about
20 minutes per case. :class:`NpzStreamWriter` writes the same format (a ZIP64 archive with one deflated
``NAME.npy`` member, read by ``np.load`` and so by nnU-Net's ensembling) from blocks handed in file order:

* each block is cut into pieces of ~8 MiB that worker threads copy to contiguous memory and deflate with ISA-L (the
  ``isal`` package, ~500 MB/s per core at level 1; the GIL is released in both steps); the CRC-32 runs over the
  pieces in order in the calling thread (~30 GB/s);
* every piece ends with a sync flush (an empty stored block), so the pieces' raw deflate streams concatenate into one
  valid stream, closed by an empty final block;
* the archive is written directly: local header with placeholders, data, then the header patched in place and a
  central directory with ZIP64 records (the member may exceed 4 GiB).

Memory: at most ``2 x threads`` pieces (and their compressed output) in flight besides the caller's block.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

PIECE_BYTES = 8 << 20
_ZIP64 = 0xFFFFFFFF
_VERSION = 45  # ZIP64


def _isal():
    try:
        from isal import isal_zlib
    except ImportError as e:  # a core dependency; only a broken install lacks it
        raise ImportError("writing .npz probability files needs ISA-L's deflate: pip install isal") from e
    return isal_zlib


def _deflate_piece(piece: np.ndarray, dtype: np.dtype, level: int) -> tuple[np.ndarray, bytes]:
    isal_zlib = _isal()
    data = np.ascontiguousarray(piece, dtype=dtype)
    comp = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    return data, comp.compress(data) + comp.flush(isal_zlib.Z_SYNC_FLUSH)


def pieces(block: np.ndarray, target: int = PIECE_BYTES) -> Iterator[np.ndarray]:
    """Views of ``block`` whose C-order bytes, concatenated, are the block's (each about ``target`` bytes or less)."""
    if block.ndim <= 1 or block.nbytes <= target or block.shape[0] == 0:
        yield block
        return
    row = block.nbytes // block.shape[0]
    if row <= target:
        step = max(1, target // max(row, 1))
        for i in range(0, block.shape[0], step):
            yield block[i:i + step]
    else:
        for i in range(block.shape[0]):
            yield from pieces(block[i], target)


def _dos_time(t: float) -> tuple[int, int]:
    lt = time.localtime(t)
    year = max(lt.tm_year, 1980)
    return (lt.tm_hour << 11) | (lt.tm_min << 5) | (lt.tm_sec // 2), ((year - 1980) << 9) | (lt.tm_mon << 5) | lt.tm_mday


class NpzStreamWriter:
    """One ``.npz`` member ``name`` of ``shape``/``dtype``, written from blocks in the member's byte order.

    Args:
        path: the file to create (use a temporary name and rename it when :meth:`close` returned).
        name: the array's key in the ``.npz`` (``probabilities``).
        shape, dtype: the array; ``fortran_order`` as in the ``.npy`` header (blocks then arrive along the last axis).
        threads: compression threads (default: the CPUs this process may use, at most 8).
        level: ISA-L compression level (0-3; 1 is nearly as small as zlib's 1 at 10x its speed).
    """

    def __init__(self, path: Path, name: str, shape: Sequence[int], *, dtype: str = "<f4", fortran_order: bool = False,
                 threads: int | None = None, level: int = 1) -> None:
        self.path, self.dtype, self.level = Path(path), np.dtype(dtype), int(level)
        self.shape = tuple(int(s) for s in shape)
        self.expected = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.written = self.compressed = self.crc = 0
        self._name = f"{name}.npy".encode()
        self._time = _dos_time(time.time())
        self._threads = int(threads or min(8, _cpus()))
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="nnseg-npz")
        self._inflight: deque[Future[tuple[np.ndarray, bytes]]] = deque()
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close/abort)
        self._file.write(self._local_header(0, 0, 0))
        header, data = _deflate_piece(_npy_header(self.shape, self.dtype, fortran_order), np.dtype(np.uint8), self.level)
        self._header_bytes, self.crc, self.compressed = header.nbytes, _isal().crc32(header), len(data)
        self._file.write(data)

    def __enter__(self) -> NpzStreamWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        """Finish the archive, or on an error stop without finishing (the caller's temporary file goes)."""
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, block: np.ndarray) -> None:
        """The next part of the array: ``block``'s C-order elements (any shape; cast to the dtype; may be a view)."""
        for piece in pieces(np.asarray(block)):
            self._submit(piece)
        self._drain(0)

    def close(self) -> None:
        """Finish the archive; raises if fewer or more bytes than the array's arrived."""
        try:
            self._drain(0)
            if self.written != self.expected:
                raise RuntimeError(f"{self.path.name}: got {self.written} of {self.expected} bytes of the array")
            self._finish()
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop without finishing (the caller removes the file)."""
        for future in self._inflight:
            future.cancel()
        self._inflight.clear()
        self._pool.shutdown(wait=True)
        self._file.close()

    def _submit(self, piece: np.ndarray) -> None:
        self._inflight.append(self._pool.submit(_deflate_piece, piece, self.dtype, self.level))
        self._drain(2 * self._threads)

    def _drain(self, keep: int) -> None:
        isal_zlib = _isal()
        while len(self._inflight) > keep:
            piece, data = self._inflight.popleft().result()
            self._file.write(data)
            self.crc = isal_zlib.crc32(piece, self.crc)  # in order, ~30 GB/s
            self.compressed += len(data)
            self.written += piece.nbytes

    def _local_header(self, crc: int, compressed: int, size: int) -> bytes:
        extra = struct.pack("<HHQQ", 1, 16, size, compressed)
        return struct.pack("<IHHHHHIIIHH", 0x04034B50, _VERSION, 0, 8, *self._time, crc, _ZIP64, _ZIP64,
                           len(self._name), len(extra)) + self._name + extra

    def _finish(self) -> None:
        isal_zlib = _isal()
        tail = isal_zlib.compressobj(self.level, isal_zlib.DEFLATED, -15).flush(isal_zlib.Z_FINISH)
        self._file.write(tail)
        compressed, size = self.compressed + len(tail), self.written + self._header_bytes
        cd_offset = self._file.tell()
        extra = struct.pack("<HHQQQ", 1, 24, size, compressed, 0)
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | _VERSION, _VERSION, 0, 8, *self._time,
                              self.crc, _ZIP64, _ZIP64, len(self._name), len(extra), 0, 0, 0, 0o100644 << 16,
                              _ZIP64) + self._name + extra
        eocd64_offset = cd_offset + len(central)
        eocd64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _VERSION, _VERSION, 0, 0, 1, 1, len(central), cd_offset)
        locator = struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1)
        eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, _ZIP64, _ZIP64, 0)
        self._file.write(central + eocd64 + locator + eocd)
        self._file.seek(0)
        self._file.write(self._local_header(self.crc, compressed, size))


def _npy_header(shape: tuple[int, ...], dtype: np.dtype, fortran_order: bool) -> np.ndarray:
    header = io.BytesIO()
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": shape}
    if len(repr(fields)) > 65000:
        np.lib.format.write_array_header_2_0(header, fields)
    else:
        np.lib.format.write_array_header_1_0(header, fields)
    return np.frombuffer(header.getvalue(), dtype=np.uint8)


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)

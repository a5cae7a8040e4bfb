"""nnInteractive's packed-array wire format (request and response bodies of its server protocol).

Layout (little-endian): ``b"NNIA"``, version 1, codec id (1 zstd, 2 lz4; nnseg's 0: uncompressed), ndim, length of the dtype name, the dtype
name (``"float32"``), ndim int64 sizes, a uint32 chunk count, then per chunk its raw and compressed byte counts
(uint64 each) and a blosc2 frame of at most 1 GiB raw bytes. Codec 0 (nnseg's addition for the browser page, which
cannot read or write blosc2 frames) stores each chunk's raw bytes as they are; it is taken and answered only where the
request asks for it (``raw=True``), so nnInteractive's own client sees nothing new. Every field is checked before anything is allocated, so a
garbage or hostile body is refused with a ValueError (HTTP 400), never a crash or an allocation of its declared size.
"""

from __future__ import annotations

import math
import struct

import blosc2
import numpy as np

MAGIC = b"NNIA"
VERSION = 1
CHUNK = 1 << 30
CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
RAW = 0
DTYPES = {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32",
          "float64"}


def pack(array: np.ndarray, *, clevel: int = 3, raw: bool = False) -> bytes:
    """``array`` as a packed body (zstd, no filter: segmentations compress best so; ``raw``: codec 0, uncompressed)."""
    array = np.ascontiguousarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    name = array.dtype.name.encode("ascii")
    parts = [struct.pack(f"<4sBBBB{len(name)}s", MAGIC, VERSION, RAW if raw else 1, array.ndim, len(name), name),
             struct.pack(f"<{array.ndim}q", *array.shape)]
    data = memoryview(array).cast("B")
    count = (data.nbytes + CHUNK - 1) // CHUNK
    parts.append(struct.pack("<I", count))
    for i in range(count):
        piece = data[i * CHUNK:min((i + 1) * CHUNK, data.nbytes)]
        frame = bytes(piece) if raw else blosc2.compress2(piece, typesize=array.dtype.itemsize, codec=blosc2.Codec.ZSTD, clevel=clevel,
                                 filters=[blosc2.Filter.NOFILTER])
        parts += [struct.pack("<QQ", len(piece), len(frame)), frame]
    return b"".join(parts)


def _header(buf: bytes, raw: bool) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if len(buf) < 8:
        raise ValueError(f"the body ({len(buf)} bytes) is not a packed array: too short")
    magic, version, codec, ndim, name_len = struct.unpack_from("<4sBBBB", buf, 0)
    if magic != MAGIC or version != VERSION or not (codec in CODECS or raw and codec == RAW):
        raise ValueError("the body is not a packed array (nnInteractive's NNIA format, version 1): bad header")
    end = 8 + name_len + 8 * ndim + 4
    if not 1 <= ndim <= 4:
        raise ValueError(f"the packed array has {ndim} dimensions; 1 to 4 are allowed")
    if len(buf) < end:
        raise ValueError(f"the packed array header is truncated ({len(buf)} bytes)")
    name = buf[8:8 + name_len].decode("ascii", errors="replace")
    if name not in DTYPES:
        raise ValueError(f"the packed array has dtype {name!r}; allowed: {sorted(DTYPES)}")
    shape = struct.unpack_from(f"<{ndim}q", buf, 8 + name_len)
    if any(s <= 0 for s in shape):
        raise ValueError(f"the packed array has shape {list(shape)}; every size must be positive")
    return np.dtype(name), tuple(int(s) for s in shape), end, codec


def packed_shape(buf: bytes, *, raw: bool = False) -> tuple[int, ...]:
    """The shape a packed body declares, from its checked header (nothing is decompressed)."""
    return _header(buf, raw)[1]


def unpack(buf: bytes, *, max_bytes: int, raw: bool = False) -> np.ndarray:
    """The array of a packed body (``raw``: codec 0, uncompressed chunks, is taken too).

    Raises:
        ValueError: not a packed array, an unsupported dtype, more than ``max_bytes`` raw bytes, or chunk lengths
            that do not add up to the declared shape (checked before decompressing).
    """
    dtype, shape, offset, codec = _header(buf, raw)
    total = math.prod(shape) * dtype.itemsize  # Python ints: a hostile shape cannot overflow
    if total > max_bytes:
        raise ValueError(f"the packed array {list(shape)} {dtype} would need {total} bytes; the server takes at most "
                         f"{max_bytes}")
    (count,) = struct.unpack_from("<I", buf, offset - 4)
    chunks, pos = [], offset
    for _ in range(count):
        if pos + 16 > len(buf):
            raise ValueError("the packed array is truncated (chunk header missing)")
        raw_len, packed_len = struct.unpack_from("<QQ", buf, pos)
        chunks.append((pos + 16, raw_len, packed_len))
        pos += 16 + packed_len
    if pos != len(buf) or sum(c[1] for c in chunks) != total or any(c[1] % dtype.itemsize for c in chunks) or (
            codec == RAW and any(c[1] != c[2] for c in chunks)):
        raise ValueError(f"the packed array's chunks do not match its shape {list(shape)} {dtype} (corrupt body)")
    out = np.empty(total // dtype.itemsize, dtype=dtype)
    written = 0
    for start, raw_len, packed_len in chunks:
        frame = memoryview(buf)[start:start + packed_len]
        if codec == RAW:
            out.view(np.uint8)[written:written + raw_len] = np.frombuffer(frame, np.uint8)
            written += raw_len
            continue
        try:
            size = blosc2.get_cbuffer_sizes(frame)[0]
            if size != raw_len:
                raise ValueError
            blosc2.decompress2(frame, dst=out[written // dtype.itemsize:(written + raw_len) // dtype.itemsize])
        except Exception:  # noqa: BLE001 - blosc2 raises several types for corrupt frames
            raise ValueError("the packed array holds a corrupt compressed chunk") from None
        written += raw_len
    return out.reshape(shape)

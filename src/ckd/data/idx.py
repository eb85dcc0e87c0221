"""A small reader/writer for the IDX format of (Fashion-)MNIST, gzipped or not.

An IDX file is: two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions ``d``, then ``d`` big-endian uint32 sizes, then the row-major data.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ckd.errors import DataError

_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` is decompressed) into a uint8 array.

    Returns an array with the file's shape, e.g. ``[N, 28, 28]`` for images and
    ``[N]`` for labels. Raises :class:`~ckd.errors.DataError` (a ``ValueError``), one line
    naming the file, for an unreadable, truncated or corrupt file (gzip checks its CRC).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        reason = "truncated" if isinstance(e, EOFError) else getattr(e, "strerror", None) or e
        raise DataError(f"{path}: unreadable or corrupt ({reason})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: IDX type code {raw[2]:#04x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise DataError(
            f"{path}: IDX header says shape {list(shape)} but holds {len(raw) - header} bytes "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    if path.suffix == ".gz":
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(data)  # mtime=0: the same array gives the same bytes
    else:
        path.write_bytes(data)
    return path

"""Reading a bundle's constants (``.npz``) without trusting its contents.

``numpy.load`` decompresses a member whole before anyone sees its shape, so a small file can
hold an array of gigabytes (zeros compress 1000:1). Here the file is read once, bounded by what
the named arrays can take, hashed from those same bytes where the caller wants it checked, and
only the named members are opened: each one's ``.npy`` header (shape, dtype) is checked before a
byte of its data is decompressed, and exactly its data is read. No pickles are loaded.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from .errors import BundleError

_SLACK = 1 << 20  # zip and .npy headers, and other members the runtime does not read


def _limit(expected: Mapping[str, tuple[int, ...]]) -> int:
    """The largest file that can hold ``expected`` as float64 (the widest float accepted)."""
    return 2 * sum(8 * math.prod(shape) for shape in expected.values()) + _SLACK


def read_file(path: Path, limit: int, hint: str) -> bytes:
    """The bytes of ``path`` (one open), refusing files over ``limit`` bytes before reading."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise BundleError(
                    f"{path} is {size} bytes, more than the {limit} its arrays can take; it holds "
                    f"something else. {hint}"
                )
            return f.read(limit + 1)
    except OSError as e:
        raise BundleError(f"{path} cannot be read ({e}); {hint}") from None


def _member(zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise BundleError(f"{where}: {name} should have shape {shape}, found nothing") from None
    with zf.open(info) as f:
        version = npy.read_magic(f)
        if version == (1, 0):
            got, fortran, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            got, fortran, dtype = npy.read_array_header_2_0(f)
        else:
            raise ValueError(f"{name} is a .npy of version {version}; expected 1.0 or 2.0")
        if dtype.kind != "f" or dtype.hasobject or dtype.fields is not None:
            raise ValueError(f"{name} has dtype {dtype}; expected a float array")
        if tuple(got) != shape:
            raise BundleError(f"{where}: {name} should have shape {shape}, found {tuple(got)}")
        nbytes = math.prod(shape) * dtype.itemsize
        data = f.read(nbytes)
        if len(data) != nbytes or f.read(1):  # reading to the end also checks the member's CRC
            raise ValueError(f"{name}'s data is not the {nbytes} bytes its header says")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, refused by the caller
        return np.ascontiguousarray(array, dtype=np.float32)


def read_arrays(
    path: Path, expected: Mapping[str, tuple[int, ...]], hint: str, sha256: str | None = None
) -> dict[str, np.ndarray]:
    """The arrays ``expected`` (name -> shape) of the ``.npz`` at ``path``, float32, all finite.
    ``sha256``: check the bytes read against it (the file may not change between check and use)."""
    data = read_file(path, _limit(expected), hint)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError(
            f"bundle file {path} does not match its SHA-256 in the manifest (corrupt, or modified "
            f"after the bundle was checked); {hint}"
        )
    arrays = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name, shape in expected.items():
                arrays[name] = _member(zf, name, tuple(shape), str(path))
    except BundleError:
        raise
    except Exception as e:  # zip and npy format errors come in many types
        raise BundleError(f"{path} is not a readable .npz ({type(e).__name__}: {e}); {hint}") from None
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise BundleError(
                f"{path}: {name} holds {int(np.size(array) - np.isfinite(array).sum())} NaN or Inf "
                f"values (or values beyond float32's range); every output would be NaN. {hint}"
            )
    return arrays

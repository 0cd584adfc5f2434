"""The one unpickler of CIFAR-10's python batches: a dataset directory can never run code
(only numpy's array and scalar reconstructors and bytes may be named) nor ask for unbounded
memory (an array is made only once its shape, dtype and data agree, within a bound)."""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

# what the CIFAR-10 python archive's pickles may name: numpy's array and scalar reconstructors
# (numpy 1 and 2 paths) and codecs.encode (bytes under pickle protocol 2). Anything else, e.g.
# os.system in a crafted test_batch, is refused before it is called.
_CIFAR_GLOBALS = frozenset(
    {
        *((m, "_reconstruct") for m in ("numpy.core.multiarray", "numpy._core.multiarray")),
        *((m, "scalar") for m in ("numpy.core.multiarray", "numpy._core.multiarray")),
        *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


CIFAR_MAX_ARRAY_BYTES = 1 << 28  # a batch's data is 10,000 x 3072 bytes (30 MB)


def _array_bytes(shape: Any, dtype: Any) -> int:
    """The bytes an array of ``shape`` and ``dtype`` takes; UnpicklingError unless both are
    what a CIFAR batch may hold (non-negative integer dims, a plain numeric dtype)."""
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise pickle.UnpicklingError(f"an array of shape {shape!r}")
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.itemsize == 0:
        raise pickle.UnpicklingError(f"an array of dtype {dtype!r}")
    return math.prod(shape) * dtype.itemsize


class _BoundedArray:
    """Stands in for numpy's ``_reconstruct``: the array is made in ``__setstate__`` only when
    its shape, dtype and data agree and it is at most CIFAR_MAX_ARRAY_BYTES. (numpy's own
    allocates the shape it is called with at once: 220 bytes could ask for 286 GiB.)"""

    def __init__(self, *_: Any) -> None:
        self.array: Any = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("an array state of another form")
        _, shape, dtype, fortran, raw = state
        n = _array_bytes(shape, dtype)
        if not isinstance(raw, bytes) or n != len(raw) or n > CIFAR_MAX_ARRAY_BYTES:
            raise pickle.UnpicklingError(f"an array of {n:,} bytes from {len(raw):,} of data")
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _bounded_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> Any:
    n = _array_bytes(shape, dtype)
    data = bytes(buf) if isinstance(buf, (bytes, bytearray, memoryview)) else None
    if data is None or n != len(data) or n > CIFAR_MAX_ARRAY_BYTES:
        raise pickle.UnpicklingError(f"an array of {n:,} bytes from a buffer of another size")
    flat = np.frombuffer(data, dtype=dtype)
    return flat.reshape(shape, order="F" if order == "F" else "C")


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, _BoundedArray):
        if obj.array is None:
            raise pickle.UnpicklingError("an array without its data")
        return obj.array
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unwrap(v) for v in obj]
    return obj


def load_cifar_batch(blob: bytes) -> Any:
    """Unpickle one CIFAR-10 batch (dicts of bytes, lists and numpy arrays) allowing only
    ``_CIFAR_GLOBALS``: a dataset directory can never run code; and arrays are made only
    once their size agrees with their data, within a bound."""

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in _CIFAR_GLOBALS:
                raise pickle.UnpicklingError(
                    f"refused {module}.{name}: a CIFAR-10 batch holds only bytes, lists and "
                    "numpy arrays"
                )
            if name == "_reconstruct":
                return _BoundedArray
            if name == "_frombuffer":
                return _bounded_frombuffer
            return super().find_class(module, name)

    return _unwrap(Restricted(io.BytesIO(blob), encoding="bytes").load())

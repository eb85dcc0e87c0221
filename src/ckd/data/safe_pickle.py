"""A pickle reader that cannot run code, for the CIFAR "python version" batch files.

The CIFAR-10/100 files are Python 2 pickles (protocol 2) of dicts of strings, lists of ints and
strings, and one uint8 NumPy array. Such an array is pickled as three calls: ``numpy.dtype``
(its element type, then a ``BUILD`` with the dtype's state), ``numpy.core.multiarray.
_reconstruct(numpy.ndarray, (0,), b'b')`` (an empty array) and a ``BUILD`` that fills it with
``(version, shape, dtype, fortran, raw bytes)``. :func:`load_data_pickle` admits exactly that:

- the opcodes of plain data (numbers, strings, bytes, tuples, lists, dicts, the memo), and
  ``GLOBAL``/``REDUCE``/``BUILD`` only for the three names above, each call checked (a plain
  numeric dtype, an empty array of ``ndarray`` itself, a ``BUILD`` whose raw bytes fit the
  shape); object (``O``) and structured dtypes are refused, so NumPy never unpickles anything
  itself;
- nothing else: no other global (``os.system``, ``builtins.eval``, ...), no ``INST``/``OBJ``/
  ``NEWOBJ`` (instances of classes), no extension registry, no persistent ids, no out-of-band
  buffers. A refused file raises :class:`pickle.UnpicklingError` before anything it names is
  called.
"""

from __future__ import annotations

import math
import pickle
import pickletools
from pathlib import Path
from typing import Any, NoReturn, TypeGuard

import numpy as np

_NUMPY_RECONSTRUCT = (
    np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct  # type: ignore[attr-defined]  # NumPy 1's place
)

# Opcodes of plain data, plus GLOBAL / STACK_GLOBAL / REDUCE / BUILD (checked below).
_ALLOWED_OPCODES = {
    op.code.encode("latin1")[0]
    for op in pickletools.opcodes
    if op.name
    in {
        "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
        "NONE", "NEWTRUE", "NEWFALSE",
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "FLOAT", "BINFLOAT",
        "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
        "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
        "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
        "EMPTY_LIST", "APPEND", "APPENDS", "LIST",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
        "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
    }
}  # fmt: skip


def _plain_dtype(d: Any) -> TypeGuard[np.dtype[Any]]:
    """A dtype of plain numbers: bool, integer or float, no objects, fields or sub-arrays."""
    return (
        isinstance(d, np.dtype)
        and d.kind in "biuf"
        and not d.hasobject
        and d.fields is None
        and d.subdtype is None
    )


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(spec)`` for a type code of plain numbers (``'u1'``, ``'<f4'``, ...)."""
    if not isinstance(spec, str | bytes) or len(spec) > 8:
        raise pickle.UnpicklingError(f"refused numpy.dtype({spec!r:.40})")
    try:
        d = np.dtype(spec.decode("latin1") if isinstance(spec, bytes) else spec)
    except TypeError:
        d = None
    if not _plain_dtype(d):
        raise pickle.UnpicklingError(f"refused numpy.dtype({spec!r}): not a plain numeric type")
    return d


def _reconstruct(subtype: Any, shape: Any, code: Any) -> np.ndarray:
    """NumPy's ``_reconstruct`` for the empty ``ndarray`` that a ``BUILD`` then fills."""
    if subtype is not np.ndarray or not isinstance(shape, tuple) or shape not in ((0,), ()):
        raise pickle.UnpicklingError("refused an array reconstruction other than ndarray((0,))")
    if code not in ("b", b"b"):
        raise pickle.UnpicklingError(f"refused an array reconstruction of type code {code!r:.20}")
    return _NUMPY_RECONSTRUCT(np.ndarray, shape, b"b")


_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # NumPy 1 (the real files)
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # NumPy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}
_CALLABLE = (_reconstruct, _dtype)


class _Opcodes(dict):
    def __missing__(self, code: int) -> NoReturn:
        name = next((op.name for op in pickletools.opcodes if op.code == chr(code)), "unknown")
        raise pickle.UnpicklingError(f"refused opcode {name} ({bytes([code])!r})")


class _DataUnpickler(pickle._Unpickler):  # the pure-Python one: its opcodes can be restricted
    stack: list[Any]  # the pure-Python unpickler's (typeshed leaves it out)
    dispatch = _Opcodes(
        {k: v for k, v in pickle._Unpickler.dispatch.items() if k in _ALLOWED_OPCODES}
    )

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}"[:120]) from None

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not any(func is f for f in _CALLABLE) or not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"refused a call of {type(func).__name__}")
        self.stack[-1] = func(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            _fill_array(inst, state)
        elif isinstance(inst, np.dtype):  # its state only restates the type: check, not apply
            self.stack[-1] = _dtype_with_state(inst, state)
        else:
            raise pickle.UnpicklingError(f"refused to set the state of a {type(inst).__name__}")

    dispatch[pickle.BUILD[0]] = load_build


def _dtype_with_state(d: np.dtype, state: Any) -> np.dtype:
    """The dtype a plain dtype's pickled state describes: its byte order, nothing else."""
    if not (
        isinstance(state, tuple)
        and len(state) in (8, 9)
        and state[0] in (3, 4)
        and state[2:5] == (None, None, None)
    ):
        raise pickle.UnpicklingError("refused a dtype state with fields or sub-arrays")
    order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
    if order not in ("|", "<", ">", "="):
        raise pickle.UnpicklingError(f"refused a dtype byte order {order!r:.10}")
    return d if order in ("|", "=") else d.newbyteorder("<" if order == "<" else ">")


def _fill_array(array: np.ndarray, state: Any) -> None:
    """``array.__setstate__(state)`` after checking it is a plain array whose bytes fit."""
    if not (isinstance(state, tuple) and len(state) == 5):
        raise pickle.UnpicklingError("refused an array state that is not (version, shape, ...)")
    _, shape, dtype, _, raw = state
    if not (
        isinstance(shape, tuple)
        and all(isinstance(n, int) and n >= 0 for n in shape)
        and _plain_dtype(dtype)
        and isinstance(raw, bytes | str)
        and math.prod(shape) * dtype.itemsize == len(raw)
    ):
        raise pickle.UnpicklingError("refused an array state: not plain numbers fitting its shape")
    array.__setstate__(state)


def load_data_pickle(path: str | Path) -> Any:
    """Unpickle the file at ``path`` (a Python 2 pickle: strings as ``latin1``) if it holds
    only plain data and NumPy arrays of numbers (see the module doc).

    Raises:
        pickle.UnpicklingError: something else is in it (nothing it names was called), or it
            is not a pickle.
        EOFError: it is truncated.
    """
    with open(path, "rb") as f:
        return _DataUnpickler(f, encoding="latin1").load()

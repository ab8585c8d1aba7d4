"""The C target's twin: the compiled library loaded through ctypes, and a Python reference.

:class:`CLibrary` runs exactly what was emitted. :func:`reference` is what it must equal: the CPU
program's own semantics (ir/cpu.py), which is the quantised model's.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
from pathlib import Path

import numpy as np

from homunculus.ir.cpu import CpuProgram
from homunculus.targets.c.codegen import VERDICT_ROLES
from homunculus.targets.p4.twin import TwinResult


class _Verdict(ctypes.Structure):
    _fields_ = [("class_id", ctypes.c_int32), ("port", ctypes.c_uint32),
                ("drop", ctypes.c_uint32), ("mark", ctypes.c_uint32), ("dscp", ctypes.c_uint32)]


def _load_private_copy(path: Path) -> ctypes.CDLL:
    """dlopen a private copy: a rebuilt library at the same path is never served from cache."""
    with tempfile.TemporaryDirectory(prefix="hmn_c_") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        return ctypes.CDLL(str(copy))  # the mapping outlives the unlinked file


class CLibrary:
    """A generated ``libhmn_<name>.so`` (ABI version 1)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lib = _load_private_copy(self.path)
        lib = self._lib
        for fn in ("hmn_abi_version", "hmn_n_features", "hmn_n_classes"):
            getattr(lib, fn).restype = ctypes.c_uint32
            getattr(lib, fn).argtypes = []
        u32p = ctypes.POINTER(ctypes.c_uint32)
        lib.hmn_classify.restype = ctypes.c_int32
        lib.hmn_classify.argtypes = [u32p]
        lib.hmn_classify_verdict.restype = ctypes.c_int32
        lib.hmn_classify_verdict.argtypes = [u32p, ctypes.POINTER(_Verdict)]
        lib.hmn_classify_batch.restype = None
        lib.hmn_classify_batch.argtypes = [u32p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int32)]
        self.abi_version = int(lib.hmn_abi_version())
        self.n_features = int(lib.hmn_n_features())
        self.n_classes = int(lib.hmn_n_classes())

    def _rows(self, x: np.ndarray) -> np.ndarray:
        """Rows as contiguous uint32 (values wrap mod 2^32, as a C caller's cast would)."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features per row, got {x.shape[1]}")
        return np.ascontiguousarray(x.astype(np.int64).astype(np.uint32))

    def classify(self, x: np.ndarray) -> np.ndarray:
        """Class index per row (via ``hmn_classify``)."""
        rows = self._rows(x)
        u32p = ctypes.POINTER(ctypes.c_uint32)
        return np.array([self._lib.hmn_classify(row.ctypes.data_as(u32p)) for row in rows],
                        dtype=np.int64)

    def classify_batch(self, x: np.ndarray) -> np.ndarray:
        """Class index per row (one ``hmn_classify_batch`` call)."""
        rows = self._rows(x)
        out = np.zeros(len(rows), dtype=np.int32)
        self._lib.hmn_classify_batch(rows.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
                                     len(rows), out.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))
        return out.astype(np.int64)

    def classify_verdict(self, x: np.ndarray) -> TwinResult:
        """Class index and verdict fields per row (via ``hmn_classify_verdict``)."""
        u32p = ctypes.POINTER(ctypes.c_uint32)
        return self._verdicts(x, lambda row, _, out: self._lib.hmn_classify_verdict(
            row.ctypes.data_as(u32p), out))

    def classify_carried(self, x: np.ndarray, partial: np.ndarray) -> TwinResult:
        """Class index and verdict fields per row from the carried partial scores ``partial``
        (n_rows x HMN_N_SCORES; via ``hmn_classify_carried``, a chain's host library)."""
        fn = self._lib.hmn_classify_carried
        u32p = ctypes.POINTER(ctypes.c_uint32)
        fn.restype = ctypes.c_int32
        fn.argtypes = [u32p, u32p, ctypes.POINTER(_Verdict)]
        parts = np.ascontiguousarray(np.asarray(partial, dtype=np.int64).astype(np.uint32))
        if len(parts) != len(self._rows(x)):
            raise ValueError(f"expected {len(self._rows(x))} rows of partial scores, "
                             f"got {len(parts)}")
        return self._verdicts(x, lambda row, r, out: fn(row.ctypes.data_as(u32p),
                                                         parts[r].ctypes.data_as(u32p), out))

    def carry_out(self, x: np.ndarray, n_out: int) -> np.ndarray:
        """The int8 activations (n_rows x ``n_out``) a part of a split MLP carries on (via
        ``hmn_carry_out``)."""
        fn = self._lib.hmn_carry_out
        fn.restype = None
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int32)]
        rows = self._rows(x)
        out = np.zeros((len(rows), n_out), dtype=np.int32)
        for r, row in enumerate(rows):
            fn(row.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)),
               out[r].ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))
        return out.astype(np.int64)

    def _verdicts(self, x: np.ndarray, call) -> TwinResult:  # noqa: ANN001
        rows = self._rows(x)
        cols: dict[str, list[int]] = {k: [] for k in ("class_id", *VERDICT_ROLES)}
        verdict = _Verdict()
        for r, row in enumerate(rows):
            call(row, r, ctypes.byref(verdict))
            for key, values in cols.items():
                values.append(int(getattr(verdict, key)))
        fields = {("class_id" if k == "class_id" else f"verdict_{k}"): np.asarray(v, np.int64)
                  for k, v in cols.items()}
        return TwinResult(fields["class_id"], fields)


def reference(program: CpuProgram, x: np.ndarray) -> TwinResult:
    """What the generated library must compute for integer feature rows ``x``."""
    fields = program.results(x)
    return TwinResult(fields["class_id"], fields)

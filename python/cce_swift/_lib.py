"""ctypes binding of libcce_cpu (the CPU engine's C ABI, header cce_cpu.h beside this file).

Finds the library (CCE_CPU_LIBRARY, then the copy installed in this package, then the build
folder of the Swift package this file sits in), declares the functions, and turns a nonzero
status into a Python exception carrying the engine's message.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

# Codes of cce_cpu.h (the same numbers as cuda/cce_cuda.h where both have them).
F32, F16, BF16, F64 = 0, 1, 2, 3
REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
MODES = {"default": 0, "kahan": 1, "kahan-full-e": 2, "kahan-full-c": 3, "exact": 4}
# apple/ml-cross-entropy's impl names for the same variants.
MODE_ALIASES = {"cce": "default", "cce_kahan": "kahan", "cce_kahan_full_e": "kahan-full-e",
                "cce_kahan_full_c": "kahan-full-c", "cce_exact": "exact",
                "kahan_full_e": "kahan-full-e", "kahan_full_c": "kahan-full-c"}
EPS_AUTO, EPS_NONE, EPS_VALUE = 0, 1, 2
# cce_cpu.h's gather callback: int (*)(const void *mine, int64_t count, int dtype, void *all, void *user).
GATHER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

STATUS_NAMES = {1: "ARGUMENT", 4: "SHAPE", 5: "EMPTY", 6: "TARGET", 7: "NON_FINITE", 8: "OPTION",
                9: "UPSTREAM", 10: "STATE", 11: "BACKEND", 12: "INTERNAL", 13: "OVERFLOW"}


class CCEError(Exception):
    """Base of the errors the engine reports; `status` is the cce_cpu_status code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class CCEValueError(CCEError, ValueError):
    """Bad input: shapes, sizes, targets, non-finite values, options (status 1 and 4-10)."""


class CCERuntimeError(CCEError, RuntimeError):
    """The engine failed for another reason (status 11, 12), or the library is missing."""


class Options(ctypes.Structure):
    """cce_cpu_options (88 bytes, ABI version 2; field order and types are the ABI)."""

    _fields_ = [
        ("ignore_index", ctypes.c_int64),
        ("reduction", ctypes.c_int32),
        ("shift", ctypes.c_int32),
        ("batch", ctypes.c_int64),
        ("softcap", ctypes.c_double),
        ("label_smoothing", ctypes.c_double),
        ("z_loss", ctypes.c_double),
        ("filter_eps", ctypes.c_double),
        ("sort_vocab", ctypes.c_int32),
        ("filter_eps_mode", ctypes.c_int32),
        ("filter_correction", ctypes.c_int32),
        ("mode", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("check_finite", ctypes.c_int32),
        ("saved_logits_per_row", ctypes.c_int32),
    ]


assert ctypes.sizeof(Options) == 88

_lib = None
_lock = threading.Lock()
PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARY_NAME = "libcce_cpu.dylib" if os.uname().sysname == "Darwin" else "libcce_cpu.so"


def library_candidates() -> list[Path]:
    """Where the library is looked for, in order."""
    out = []
    env = os.environ.get("CCE_CPU_LIBRARY")
    if env:
        out.append(Path(env))
    out.append(PACKAGE_DIR / LIBRARY_NAME)
    # Running from a checkout (python/cce_swift/_lib.py): the Swift package's release build.
    out.append(PACKAGE_DIR.parent.parent / ".build" / "release" / LIBRARY_NAME)
    return out


def lib() -> ctypes.CDLL:
    """The loaded library (loaded once per process)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        reasons = []
        for path in library_candidates():
            if not path.exists():
                reasons.append(f"{path}: no such file")
                continue
            try:
                L = ctypes.CDLL(str(path))
            except OSError as e:
                reasons.append(f"{path}: {e}")
                continue
            _declare(L)
            if L.cce_cpu_abi_version() not in (3, 4):
                reasons.append(f"{path}: ABI version {L.cce_cpu_abi_version()}, this binding needs 3 or 4")
                continue
            L.path = str(path)
            _lib = L
            return L
        raise CCERuntimeError(
            "cannot load the CPU engine's library (reinstall with `pip install ./python`, or build it with "
            "`swift build -c release --product cce_cpu` and set CCE_CPU_LIBRARY): " + "; ".join(reasons), 12)


def _declare(L: ctypes.CDLL) -> None:
    vp, i64, i32, dp, fp = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
    op = ctypes.POINTER(Options)
    L.cce_cpu_abi_version.restype = ctypes.c_int
    L.cce_cpu_abi_version.argtypes = []
    L.cce_cpu_last_error.restype = ctypes.c_char_p
    L.cce_cpu_last_error.argtypes = []
    L.cce_cpu_default_options.restype = None
    L.cce_cpu_default_options.argtypes = [op]
    L.cce_cpu_forward.restype = ctypes.c_int
    L.cce_cpu_forward.argtypes = [vp, vp, vp, vp, i64, i64, i64, i32, i32, i32, fp, op, dp, dp,
                                  ctypes.POINTER(ctypes.c_void_p)]
    L.cce_cpu_backward.restype = ctypes.c_int
    L.cce_cpu_backward.argtypes = [vp, vp, vp, vp, fp, vp, vp, vp, i32, i32, i32, vp]
    L.cce_cpu_state_free.restype = None
    L.cce_cpu_state_free.argtypes = [vp]
    L.cce_cpu_loss_and_gradients.restype = ctypes.c_int
    L.cce_cpu_loss_and_gradients.argtypes = [vp, vp, vp, vp, i64, i64, i64, i32, i32, i32, fp, op, fp, dp, dp,
                                             vp, vp, vp, i32, i32, i32, vp]
    # ABI 3: the same two calls with grad_loss as double (the binding's: the exact mode's upstream
    # stays exact; the other modes round each value to float32 themselves). Absent from older
    # libraries, which the version check then refuses with its message.
    if hasattr(L, "cce_cpu_backward_f64") and hasattr(L, "cce_cpu_loss_and_gradients_f64"):
        L.cce_cpu_backward_f64.restype = ctypes.c_int
        L.cce_cpu_backward_f64.argtypes = L.cce_cpu_backward.argtypes
        L.cce_cpu_loss_and_gradients_f64.restype = ctypes.c_int
        L.cce_cpu_loss_and_gradients_f64.argtypes = L.cce_cpu_loss_and_gradients.argtypes
    # ABI 4: the vocabulary-parallel calls (vocab_parallel_options; _vocab_parallel.py).
    if hasattr(L, "cce_cpu_shard_forward") and hasattr(L, "cce_cpu_shard_loss_and_gradients"):
        gather = GATHER
        L.cce_cpu_shard_forward.restype = ctypes.c_int
        L.cce_cpu_shard_forward.argtypes = [vp, vp, vp, vp, i64, i64, i64, i64, i64, i64, i32, i32, i32, fp, op, dp, dp,
                                            ctypes.POINTER(ctypes.c_void_p), gather, vp]
        L.cce_cpu_shard_loss_and_gradients.restype = ctypes.c_int
        L.cce_cpu_shard_loss_and_gradients.argtypes = [vp, vp, vp, vp, i64, i64, i64, i64, i64, i64, i32, i32, i32, fp,
                                                       op, i64, dp, dp, dp, vp, vp, vp, i32, i32, i32, vp, gather, vp]
    if hasattr(L, "cce_cpu_release_scratch"):   # absent from libraries built before it (CCE_CPU_LIBRARY)
        L.cce_cpu_release_scratch.restype = i64
        L.cce_cpu_release_scratch.argtypes = []


def check(status: int) -> None:
    """Raises the exception for a nonzero cce_cpu_status, with the engine's message."""
    if status == 0:
        return
    message = (lib().cce_cpu_last_error() or b"").decode("utf-8", "replace")
    name = STATUS_NAMES.get(status, str(status))
    if status in (11, 12) or status not in STATUS_NAMES:
        raise CCERuntimeError(f"{message} [{name}]", status)
    raise CCEValueError(message, status)


def default_options() -> Options:
    o = Options()
    lib().cce_cpu_default_options(ctypes.byref(o))
    return o


class State:
    """A forward's O(N) state for cce_cpu_backward; freed when garbage-collected."""

    def __init__(self, handle: ctypes.c_void_p):
        self.handle = handle

    def __del__(self):
        h, self.handle = getattr(self, "handle", None), None
        if h and _lib is not None:
            _lib.cce_cpu_state_free(h)


# The calls, in one place so tests can observe what is passed (pointers included). grad_loss is a
# float64 array: the _f64 entry points.
def forward(*args) -> None:
    check(lib().cce_cpu_forward(*args))


def backward(*args) -> None:
    check(lib().cce_cpu_backward_f64(*args))


def loss_and_gradients(*args) -> None:
    check(lib().cce_cpu_loss_and_gradients_f64(*args))


def release_scratch() -> int:
    """Frees the Float32 gradient scratch the library keeps between fused calls; bytes freed."""
    L = lib()
    return int(L.cce_cpu_release_scratch()) if hasattr(L, "cce_cpu_release_scratch") else 0

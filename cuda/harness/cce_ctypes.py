"""ctypes binding of libcce_cuda.so for PyTorch tensors (used by test_cuda.py and bench_cuda.py).

    loss, lse = forward(E, C, targets, bias=None, **options)
    dE, dC, dbias, stats = backward(E, C, targets, lse, grad, bias=None, **options)
    out = host_run(E, C, targets, bias=None, dtype=..., want=("dE", "dC"), repeats=0, **options)

E (N, D), C (V, D), bias (V): one of float32 / float16 / bfloat16, contiguous, on the GPU.
targets (N,) int64. Workspaces are allocated with torch, so PyTorch's memory statistics see them.

filter_eps (an option of all three): "auto" (default) resolves to the threshold by element type,
FILTER_EPS_BY_DTYPE, the larger of E's and C's; None or 0 turns filtering off; a number >= 0 is
used as given. The library takes the resolved value only (cce_cuda.h).
"""
import ctypes
import os

import torch


class Options(ctypes.Structure):
    _fields_ = [
        ("ignore_index", ctypes.c_int64),
        ("reduction", ctypes.c_int32),
        ("shift", ctypes.c_int32),
        ("batch", ctypes.c_int64),
        ("softcap", ctypes.c_float),
        ("label_smoothing", ctypes.c_float),
        ("z_loss", ctypes.c_float),
        ("filter_eps", ctypes.c_float),
        ("sort_vocab", ctypes.c_int32),
        ("lean_memory", ctypes.c_int32),
        ("dc_chunk_rows", ctypes.c_int64),
    ]


assert ctypes.sizeof(Options) == 56


class HostReport(ctypes.Structure):
    _fields_ = [
        ("forward_ms", ctypes.c_double),
        ("backward_ms", ctypes.c_double),
        ("loss_backward_ms", ctypes.c_double),
        ("peak_device_mib", ctypes.c_double),
        ("tiles_kept", ctypes.c_double),
        ("device_name", ctypes.c_char * 128),
    ]

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# The filter threshold by element type (cce_dtype code), as apple/ml-cross-entropy and the Swift
# package choose it: f32 2^-28, f16 2^-15, bf16 2^-12.
FILTER_EPS_BY_DTYPE = {0: 2.0 ** -28, 1: 2.0 ** -15, 2: 2.0 ** -12}


def resolve_filter_eps(filter_eps, e_dtype, c_dtype):
    """The threshold handed to the library: "auto" -> by type, the larger of E's and C's (0 for a
    dtype code the library rejects anyway); None -> 0 (no filtering); else float(filter_eps)."""
    if filter_eps is None:
        return 0.0
    if isinstance(filter_eps, str):
        if filter_eps != "auto":
            raise ValueError(f"filter_eps: 'auto', None or a number (got {filter_eps!r})")
        return max(FILTER_EPS_BY_DTYPE.get(e_dtype, 0.0), FILTER_EPS_BY_DTYPE.get(c_dtype, 0.0))
    return float(filter_eps)

_lib = None


def lib():
    global _lib
    if _lib is None:
        # default: cuda/libcce_cuda.so, where cuda/build.sh puts it (this file is in cuda/harness/)
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.environ.get("CCE_LIB", os.path.join(os.path.dirname(here), "libcce_cuda.so"))
        L = ctypes.CDLL(path)
        vp, i64, sz = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
        op = ctypes.POINTER(Options)
        L.cce_last_error.restype = ctypes.c_char_p
        L.cce_default_options.argtypes = [op]
        L.cce_forward_workspace_size.restype = sz
        L.cce_forward_workspace_size.argtypes = [i64, i64, i64, ctypes.c_int, op]
        L.cce_forward.restype = ctypes.c_int
        L.cce_forward.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, op, vp, vp, vp, sz, vp]
        L.cce_backward_workspace_size.restype = sz
        L.cce_backward_workspace_size.argtypes = [i64, i64, i64, ctypes.c_int, op, ctypes.c_int, ctypes.c_int, ctypes.c_int]
        L.cce_backward.restype = ctypes.c_int
        L.cce_backward.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, op, vp, vp, vp, vp, vp, vp, sz,
                                   ctypes.POINTER(ctypes.c_int64), vp]
        L.cce_forward_weighted.restype = ctypes.c_int
        L.cce_forward_weighted.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, vp, op, vp, vp, vp, sz, vp]
        L.cce_backward_weighted.restype = ctypes.c_int
        L.cce_backward_weighted.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int, vp, op, vp, vp, vp, vp, vp,
                                            vp, sz, ctypes.POINTER(ctypes.c_int64), vp]
        fp = ctypes.POINTER(ctypes.c_float)
        L.cce_host_run.restype = ctypes.c_int
        L.cce_host_run.argtypes = [vp, vp, vp, ctypes.POINTER(ctypes.c_int64), i64, i64, i64, ctypes.c_int, op,
                                   fp, fp, fp, fp, fp, ctypes.c_int, ctypes.POINTER(HostReport)]
        _lib = L
    return _lib


def make_options(e_dtype, c_dtype, ignore_index=-100, reduction="mean", shift=0, batch=1, softcap=0.0,
                 label_smoothing=0.0, z_loss=0.0, filter_eps="auto", sort_vocab=True, lean_memory=True,
                 dc_chunk_rows=0):
    """cce_options for E and C of the given cce_dtype codes (they resolve filter_eps "auto")."""
    o = Options()
    lib().cce_default_options(ctypes.byref(o))
    o.ignore_index = ignore_index
    o.reduction = REDUCTIONS[reduction]
    o.shift = shift
    o.batch = batch
    o.softcap = softcap or 0.0
    o.label_smoothing = label_smoothing
    o.z_loss = z_loss
    o.filter_eps = resolve_filter_eps(filter_eps, e_dtype, c_dtype)
    o.sort_vocab = int(sort_vocab)
    o.lean_memory = int(lean_memory)
    o.dc_chunk_rows = dc_chunk_rows
    return o


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _check(rc):
    if rc != 0:
        raise RuntimeError(f"cce error {rc}: {lib().cce_last_error().decode()}")


def forward(E, C, targets, bias=None, weight=None, **kw):
    """weight: per-class weights (V) float32 on the device, or None (cce_forward_weighted)."""
    N, D = E.shape
    V = C.shape[0]
    dt = DTYPES[E.dtype]
    o = make_options(dt, DTYPES[C.dtype], **kw)
    ws = torch.empty(lib().cce_forward_workspace_size(N, D, V, dt, ctypes.byref(o)), dtype=torch.uint8, device=E.device)
    loss = torch.empty(N if kw.get("reduction", "mean") == "none" else 1, dtype=torch.float32, device=E.device)
    lse = torch.empty(N, dtype=torch.float32, device=E.device)
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    _check(lib().cce_forward_weighted(_ptr(E), _ptr(C), _ptr(bias), _ptr(targets), N, D, V, dt, _ptr(weight),
                                      ctypes.byref(o), _ptr(loss), _ptr(lse), _ptr(ws), ws.numel(), stream))
    if kw.get("reduction", "mean") != "none":
        loss = loss[0]
    return loss, lse


def backward(E, C, targets, lse, grad, bias=None, want_dE=True, want_dC=True, want_dbias=None, stats=False,
             poison=False, weight=None, **kw):
    """grad: the upstream gradient, a scalar tensor (sum / mean) or (N,) (none). Returns dE, dC, dbias, stats."""
    N, D = E.shape
    V = C.shape[0]
    dt = DTYPES[E.dtype]
    o = make_options(dt, DTYPES[C.dtype], **kw)
    if want_dbias is None:
        want_dbias = bias is not None
    fill = torch.empty if not poison else (lambda *s, **k: torch.full(s, float("nan"), **k))
    dE = fill(N, D, dtype=E.dtype, device=E.device) if want_dE else None
    dC = fill(V, D, dtype=E.dtype, device=E.device) if want_dC else None
    db = fill(V, dtype=E.dtype, device=E.device) if want_dbias else None
    ws = torch.empty(lib().cce_backward_workspace_size(N, D, V, dt, ctypes.byref(o), int(want_dE), int(want_dC),
                                                        int(want_dbias)), dtype=torch.uint8, device=E.device)
    g = grad.reshape(-1).to(torch.float32).contiguous()
    st = (ctypes.c_int64 * 2)() if stats else None
    stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
    _check(lib().cce_backward_weighted(_ptr(E), _ptr(C), _ptr(bias), _ptr(targets), N, D, V, dt, _ptr(weight),
                                       ctypes.byref(o), _ptr(lse), _ptr(g), _ptr(dE), _ptr(dC), _ptr(db), _ptr(ws),
                                       ws.numel(), st, stream))
    return dE, dC, db, (tuple(st) if stats else None)


def host_run(E, C, targets, bias=None, dtype=2, want=("dE", "dC"), repeats=0, want_lse=True, **kw):
    """cce_host_run on HOST numpy arrays. E (N, D), C (V, D), bias (V) hold the raw elements of `dtype`
    (0 f32 as float32; 1 f16 as float16; 2 bf16 as uint16 bit patterns); targets int64 (N,).
    want: any of "dE", "dC", "dbias". Returns a dict of float32 numpy arrays (loss, lse, dE, dC, dbias
    as asked) and the report (a dict) under "report"."""
    import numpy as np

    o = make_options(dtype, dtype, **kw)
    N, D = E.shape
    V = C.shape[0]
    E = np.ascontiguousarray(E)
    C = np.ascontiguousarray(C)
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    bias = None if bias is None else np.ascontiguousarray(bias)
    out = {"loss": np.full(N if kw.get("reduction", "mean") == "none" else 1, np.nan, np.float32)}
    if want_lse:
        out["lse"] = np.full(N, np.nan, np.float32)
    shapes = {"dE": (N, D), "dC": (V, D), "dbias": (V,)}
    for k in want:
        out[k] = np.full(shapes[k], np.nan, np.float32)

    def fptr(k):
        return out[k].ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if k in out else None

    rep = HostReport()
    rc = lib().cce_host_run(E.ctypes.data, C.ctypes.data, None if bias is None else bias.ctypes.data,
                            targets.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), N, D, V, dtype,
                            ctypes.byref(o), fptr("loss"), fptr("lse"), fptr("dE"), fptr("dC"), fptr("dbias"),
                            repeats, ctypes.byref(rep))
    _check(rc)
    out["report"] = {k: getattr(rep, k) for k, _ in HostReport._fields_}
    out["report"]["device_name"] = rep.device_name.decode()
    return out

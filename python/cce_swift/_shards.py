"""Vocabulary parallel, the parts that need no torch: the options, the gather the engine calls
back, the agreement before any other exchange, dE's sum in rank order, and the NumPy path.

A gather here is any function that takes this rank's 1-D NumPy array and returns every rank's
array of the same length, in rank order (this rank's among them): torch.distributed's all_gather
(_vocab_parallel.py), mpi4py's `comm.allgather`, or threads meeting at a barrier (the tests).
The engine calls it through cce_cpu.h's `gather` callback (cce_cpu_shard_forward,
cce_cpu_shard_loss_and_gradients); the binding calls it for its own agreement and for dE's sum.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import _core, _lib

# dE's ordered sum moves this many values per gather (1 MiB a rank in float32).
SUM_PIECE = 1 << 18

# What this process has sent through the gathers of its vocabulary-parallel calls (each sends a
# rank's values once and receives every rank's): a diagnostic python/benchmarks/vocab_parallel.py
# reports. Keys: gathers, gathered_bytes (the engine's exchanges), sum_bytes (dE's ordered sum).
traffic = {"gathers": 0, "gathered_bytes": 0, "sum_bytes": 0}


def partition(vocab_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Classes start ..< stop of rank `rank` of `world_size`: the first V mod P ranks one class
    larger (the Swift API's VocabularyShard.split, apple/ml-cross-entropy's split)."""
    base, extra = divmod(vocab_size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class VocabParallelOptions:
    """This rank's shard of the vocabulary for `linear_cross_entropy(..., vocab_parallel_options=...)`,
    with apple/ml-cross-entropy's names: `c` (and `bias`) hold classes start ..< stop. With torch
    tensors the ranks are a torch.distributed process group, `group` (None: the default group);
    with NumPy arrays `gather` is how they meet (a function from this rank's 1-D array to every
    rank's, in rank order: mpi4py's `comm.allgather`, say). With reduce_e_grad (the default)
    e's gradient is the whole dE, summed over the ranks in rank order, else this shard's part
    (summing is then the caller's). exchange_chunk: tokens per exchange of the fused call (None:
    the engine's default for rank 0's thread count; every rank uses rank 0's)."""

    start: int
    stop: int
    group: Any = None
    reduce_e_grad: bool = True
    exchange_chunk: int | None = None
    gather: Callable[[np.ndarray], Any] | None = None

    @classmethod
    def from_vocab(cls, vocab_size: int, group: Any = None, **kwargs) -> "VocabParallelOptions":
        """This rank's contiguous share of `vocab_size` classes in the torch.distributed `group`."""
        import torch.distributed as dist

        start, stop = partition(vocab_size, dist.get_rank(group), dist.get_world_size(group))
        return cls(start, stop, group, **kwargs)

    @classmethod
    def from_rank(cls, vocab_size: int, rank: int, ranks: int, gather, **kwargs) -> "VocabParallelOptions":
        """Rank `rank` of `ranks`'s share of `vocab_size` classes, meeting the others through
        `gather` (NumPy arrays; with mpi4py: from_rank(V, comm.rank, comm.size, comm.allgather))."""
        start, stop = partition(vocab_size, rank, ranks)
        return cls(start, stop, gather=gather, **kwargs)


class Gatherer:
    """A gather function, checked: every call returns a (ranks, count) array of the input's dtype."""

    def __init__(self, fn: Callable[[np.ndarray], Any], ranks: int | None = None):
        self.fn = fn
        self.ranks = ranks   # None: learnt from the first gather

    def __call__(self, mine: np.ndarray) -> np.ndarray:
        try:
            out = np.stack([np.asarray(p, dtype=mine.dtype).reshape(-1) for p in self.fn(mine)])
        except Exception as error:
            raise _lib.CCERuntimeError(f"the all-gather failed: {error!r}", 11) from error
        if out.shape[1] != mine.size or (self.ranks is not None and out.shape[0] != self.ranks):
            raise _lib.CCERuntimeError(f"the gather returned {out.shape[0]} arrays of {out.shape[1]} values for "
                                       f"{mine.size} values (expected one array a rank)", 11)
        self.ranks = out.shape[0]
        return out


class EngineGather:
    """cce_cpu.h's `gather` callback over a Gatherer. An exception raised inside it is kept and
    re-raised after the call (the engine stops with status BACKEND)."""

    def __init__(self, gatherer: Gatherer):
        self.gatherer = gatherer
        self.error: BaseException | None = None
        self.callback = _lib.GATHER(self._call)

    def _call(self, mine, count, dtype, out, user) -> int:
        try:
            kind = np.float32 if dtype == _lib.F32 else np.float64
            if count > 0:   # every rank has the same count; none gathers zero values
                size = np.dtype(kind).itemsize
                src = np.frombuffer((ctypes.c_char * (count * size)).from_address(mine), dtype=kind).copy()
                every = self.gatherer(src)
                ctypes.memmove(out, every.ctypes.data, every.nbytes)
                traffic["gathers"] += 1
                traffic["gathered_bytes"] += count * size
            return 0
        except BaseException as e:   # noqa: BLE001 - handed back to the caller after the call
            self.error = e
            return 1

    def check(self, status: int) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            if isinstance(error, _lib.CCEError):
                raise error
            raise _lib.CCERuntimeError(f"the all-gather failed: {error!r}", 11) from error
        _lib.check(status)


def agree(gatherer: Gatherer, vp: VocabParallelOptions, failure: BaseException | None, weight_length: int) -> int:
    """One gather of every rank's (outcome of its checks, start, stop, length of its class
    weights or -1), before anything else moves: when any rank's checks failed every rank raises
    (that rank its own error), so that none is left waiting in a later collective; then V, the
    last rank's stop, once the shards are seen to tile [0, V) in rank order and every weight
    to have V values. The library's own agreement (cce_cpu.h) then compares the rest."""
    try:
        mine = np.array([int(failure is not None), int(vp.start), int(vp.stop), int(weight_length)], dtype=np.int64)
    except (TypeError, ValueError):
        mine = np.array([1, 0, 0, -1], dtype=np.int64)
    parts = gatherer(mine)
    world = len(parts)
    if failure is not None:
        raise failure
    failed = [r for r, p in enumerate(parts) if int(p[0]) != 0]
    if failed:
        raise _lib.CCEValueError(f"rank {failed[0]} of {world} failed its checks (its own error says why)", 10)
    end = 0
    for r, p in enumerate(parts):
        s, t = int(p[1]), int(p[2])
        if s != end or t < s:
            raise _lib.CCEValueError(f"invalid option: vocab_parallel_options of rank {r} hold classes {s} ..< {t}, "
                                     f"where the ranks before it end at {end} (the shards must tile [0, V) in rank "
                                     "order)", 8)
        end = t
    for r, p in enumerate(parts):
        if int(p[3]) not in (-1, end):
            raise _lib.CCEValueError(f"invalid shape: rank {r}'s weight has {int(p[3])} values, V = {end}", 4)
    return end


def ordered_sum(flat: np.ndarray, gatherer: Gatherer) -> None:
    """flat (1-D float32 or float64, contiguous) summed over the ranks in rank order, in place,
    SUM_PIECE values a gather: every rank gets the same bits, run after run (an all-reduce adds
    in whatever order its algorithm takes)."""
    if gatherer.ranks == 1:
        return
    for lo in range(0, flat.size, SUM_PIECE):
        piece = flat[lo:lo + SUM_PIECE]
        parts = gatherer(np.ascontiguousarray(piece))
        traffic["sum_bytes"] += piece.nbytes
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        piece[...] = total


def check_shard(vp: VocabParallelOptions, c_shape, bias_shape, e_shape) -> int:
    """This rank's rows, start ..< stop; CCEValueError unless c is (rows, D) and bias (rows)."""
    start, stop = int(vp.start), int(vp.stop)
    if start < 0 or stop < start:
        raise _lib.CCEValueError(f"invalid option: vocab_parallel_options start {start}, stop {stop}", 8)
    rows = stop - start
    if tuple(c_shape) != (rows, e_shape[-1]) or (bias_shape is not None and tuple(bias_shape) != (rows,)):
        raise _lib.CCEValueError(
            f"invalid shape: this rank's shard holds classes {start} ..< {stop}, so c must be "
            f"({rows}, {e_shape[-1]}) and bias ({rows},); got c {tuple(c_shape)}"
            + ("" if bias_shape is None else f", bias {tuple(bias_shape)}"), 4)
    return rows


def check_library() -> None:
    if not hasattr(_lib.lib(), "cce_cpu_shard_loss_and_gradients"):
        raise _lib.CCERuntimeError(f"{_lib.lib().path} predates the vocabulary-parallel calls (C ABI 4); "
                                   "rebuild it (pip install ./python)", 12)


def run_numpy(e, c, targets, bias, weight, vp: VocabParallelOptions, *, reduction, shift, mode, return_lse,
              return_grads, grad_output, grad_dtype, allow_copy, **options):
    """The NumPy path (cce_swift._numpy's, one shard): the loss of the whole vocabulary, lse, and
    with return_grads this shard's gradients of c and bias and e's (summed over the ranks unless
    reduce_e_grad is False)."""
    from . import _numpy

    if vp.gather is None:
        raise TypeError("vocab_parallel_options with NumPy arrays needs gather= (a function from this rank's "
                        "1-D array to every rank's, in rank order: mpi4py's comm.allgather, say)")
    gatherer = Gatherer(vp.gather)
    failure = None
    try:   # every check on this rank, before the agreement: nothing after it may fail on one rank alone
        check_library()
        shift = _core.normalize_shift(shift)
        mode = _core.normalize_mode(mode)
        exact = mode == "exact"
        e = _numpy.as_input(e, "e", allow_copy)
        c = _numpy.as_input(c, "c", allow_copy)
        b = None if bias is None else _numpy.as_input(bias, "bias", allow_copy)
        t = _numpy.as_targets(targets)
        w = _numpy.as_weight(weight)
        rows = check_shard(vp, c.shape, None if b is None else b.shape, e.shape)
        mine = _core.layout(e.shape, (rows, e.shape[-1]), t.shape, None, None, shift)   # all but V
        opt = _core.make_options(reduction=reduction, shift=shift, mode=mode, batch=mine.batch, **options)
        codes = (_numpy.dtype_code(e.dtype, "e"), _numpy.dtype_code(c.dtype, "c"),
                 0 if b is None else _numpy.dtype_code(b.dtype, "bias"))
        if return_grads:
            sum_type = np.dtype(np.float64 if exact else np.float32)   # dE's parts, summed before one rounding

            def out_type(x):
                if grad_dtype is None:
                    return sum_type
                return x.dtype if isinstance(grad_dtype, str) and grad_dtype == "input" else np.dtype(grad_dtype)

            types = [out_type(x) for x in (e, c, b) if x is not None]
            for dt in types:
                _numpy.output_code(dt, "grad_dtype")
            g = _numpy.upstream_array(grad_output, mine, reduction)
    except Exception as error:   # noqa: BLE001 - raised on this rank after the agreement
        failure = error
    vocab = agree(gatherer, vp, failure, -1 if weight is None or failure is not None else w.size)
    lay = _core.layout(e.shape, (vocab, e.shape[-1]), t.shape, None, None if w is None else w.shape, shift)
    loss = np.full(lay.n if reduction == "none" else 1, np.nan, dtype=np.float64)
    lse = np.full(lay.n, np.nan, dtype=np.float64) if return_lse else None
    engine = EngineGather(gatherer)
    ptr = _numpy.ptr
    head = (ptr(e), ptr(c), ptr(b), ptr(t), lay.n, lay.d, vocab, int(vp.start), rows, gatherer.ranks, *codes, ptr(w),
            ctypes.byref(opt))
    grads = None
    if return_grads:
        dE = np.empty(e.shape, dtype=sum_type)
        dC = np.empty(c.shape, dtype=types[1])
        dB = None if b is None else np.empty(b.shape, dtype=types[2])
        chunk = 0 if vp.exchange_chunk is None else int(vp.exchange_chunk)
        status = _lib.lib().cce_cpu_shard_loss_and_gradients(
            *head, chunk, ptr(g), ptr(loss), ptr(lse), ptr(dE), ptr(dC), ptr(dB), _numpy.output_code(dE.dtype, "dE"),
            _numpy.output_code(dC.dtype, "grad_dtype"), 0 if dB is None else _numpy.output_code(dB.dtype, "grad_dtype"),
            None, engine.callback, None)
        engine.check(status)
        if vp.reduce_e_grad:
            ordered_sum(dE.reshape(-1), gatherer)
        grads = _numpy.Gradients(dE.astype(types[0], copy=False), dC, dB)
    else:
        status = _lib.lib().cce_cpu_shard_forward(*head, ptr(loss), ptr(lse), None, engine.callback, None)
        engine.check(status)
    return _numpy.outputs(lay, reduction, exact, loss, lse, grads)

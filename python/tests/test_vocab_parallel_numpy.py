"""vocab_parallel_options with NumPy arrays and a gather of the caller's (what mpi4py's
comm.allgather gives): 1 to 3 ranks on threads of this process meeting at a barrier, against one
process; and every rank raising when one rank's inputs fail."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import cce_swift as cs
from cce_swift import _lib
from cce_swift._shards import partition
from conftest import BF16, problem

if not hasattr(_lib.lib(), "cce_cpu_shard_forward"):
    pytest.skip("the library predates the vocabulary-parallel calls (ABI 4)", allow_module_level=True)


class Ranks:
    """`ranks` threads, each a rank; gather(rank) is that rank's gather function."""

    def __init__(self, ranks: int):
        self.ranks = ranks
        self.barrier = threading.Barrier(ranks, timeout=60)
        self.slots = [None] * ranks

    def gather(self, rank: int):
        def every(mine):
            self.slots[rank] = np.array(mine, copy=True)
            self.barrier.wait()
            out = [s.copy() for s in self.slots]
            self.barrier.wait()
            return out
        return every

    def run(self, body):
        """body(rank) on every rank's thread; the results (or exceptions) in rank order."""
        results = [None] * self.ranks

        def one(r):
            try:
                results[r] = body(r)
            except Exception as error:   # noqa: BLE001 - returned to the test
                results[r] = error
        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.ranks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return results


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


CASES = [(np.float32, "mean", {}), (np.float32, "none", {"label_smoothing": 0.1, "bias": True}),
         ("bf16", "sum", {"bias": True, "z_loss": 1e-3}), (np.float32, "mean", {"mode": "exact", "bias": True})]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("dtype,reduction,extra", CASES)
def test_numpy_ranks_agree_with_one_process(world, dtype, reduction, extra):
    if dtype == "bf16":
        if BF16 is None:
            pytest.skip("ml_dtypes not installed")
        dtype = BF16
    extra = dict(extra)
    with_bias = extra.pop("bias", False)
    v = 503
    e, c, t, b = problem(n=90, d=16, v=v, seed=7, dtype=dtype, bias=with_bias)
    g = np.linspace(0.5, 1.5, t.size).reshape(t.shape) if reduction == "none" else None
    kw = dict(reduction=reduction, return_lse=True, return_grads=True, grad_output=g, threads=1, **extra)
    one = cs.linear_cross_entropy(e, c, t, b, **kw)
    truth = cs.linear_cross_entropy(e, c, t, b, **{**kw, "mode": "exact"})
    ranks = Ranks(world)

    def rank(r):
        vp = cs.VocabParallelOptions.from_rank(v, r, world, ranks.gather(r))
        sl = slice(vp.start, vp.stop)
        first = cs.linear_cross_entropy(e, c[sl], t, None if b is None else b[sl], vocab_parallel_options=vp, **kw)
        second = cs.linear_cross_entropy(e, c[sl], t, None if b is None else b[sl], vocab_parallel_options=vp, **kw)
        return sl, first, second

    got = ranks.run(rank)
    exact = extra.get("mode") == "exact"
    for r, out in enumerate(got):
        assert not isinstance(out, Exception), f"rank {r}: {out!r}"
        sl, (loss, lse, grads), (loss2, lse2, grads2) = out
        assert sl == slice(*partition(v, r, world))
        # Bitwise run to run, and loss, lse and dE the same on every rank.
        for a, b2 in ((loss, loss2), (lse, lse2), (grads.e, grads2.e), (grads.c, grads2.c)):
            assert np.array_equal(a, b2)
        assert np.array_equal(loss, got[0][1][0]) and np.array_equal(grads.e, got[0][1][2].e)
        assert rel(loss, one[0]) <= (1e-12 if exact else 1e-6)
        assert rel(lse, one[1]) <= (1e-12 if exact else 1e-6)
        pieces = [(grads.e, one[2].e, truth[2].e), (grads.c, one[2].c[sl], truth[2].c[sl])]
        if b is not None:
            pieces.append((grads.bias, one[2].bias[sl], truth[2].bias[sl]))
        for mine, whole, true in pieces:
            if exact:
                assert rel(mine, whole) <= 1e-12
            else:
                assert rel(mine, true) <= 2 * rel(whole, true) + 1e-4


def test_numpy_rank_with_bad_input_fails_every_rank():
    v = 101
    e, c, t, _ = problem(n=20, d=8, v=v, seed=3)
    ranks = Ranks(3)

    def rank(r):
        vp = cs.VocabParallelOptions.from_rank(v, r, 3, ranks.gather(r))
        mine = t.copy()
        if r == 1:
            mine[0] = v + 7   # the library's check
        rows = c[vp.start:vp.stop + (1 if r == 0 else 0)]   # the binding's check
        return cs.linear_cross_entropy(e, rows, mine, vocab_parallel_options=vp, return_grads=True)

    got = ranks.run(rank)
    assert all(isinstance(x, cs.CCEValueError) for x in got), got
    assert "this rank's shard holds classes" in str(got[0])
    assert "rank 0 of 3 failed its checks" in str(got[1]) and "rank 0 of 3 failed its checks" in str(got[2])
    # The binding's failure is agreed first; with it gone, the library's own agreement names rank 1.
    ranks = Ranks(3)

    def rank2(r):
        vp = cs.VocabParallelOptions.from_rank(v, r, 3, ranks.gather(r))
        mine = t.copy()
        if r == 1:
            mine[0] = v + 7
        return cs.linear_cross_entropy(e, c[vp.start:vp.stop], mine, vocab_parallel_options=vp, return_grads=True)

    got = ranks.run(rank2)
    assert all(isinstance(x, cs.CCEValueError) for x in got), got
    assert "target" in str(got[1]) and "rank 1 of 3 failed its checks" in str(got[0])
    # An upstream gradient of the wrong shape on one rank (checked before the agreement too).
    ranks = Ranks(3)

    def rank3(r):
        vp = cs.VocabParallelOptions.from_rank(v, r, 3, ranks.gather(r))
        g = np.ones(t.size + (1 if r == 2 else 0))
        return cs.linear_cross_entropy(e, c[vp.start:vp.stop], t, vocab_parallel_options=vp, reduction="none",
                                       return_grads=True, grad_output=g)

    got = ranks.run(rank3)
    assert all(isinstance(x, cs.CCEValueError) for x in got), got
    assert "upstream" in str(got[2]) and "rank 2 of 3 failed its checks" in str(got[0])


@pytest.mark.parametrize("fails_at", [1, 2])
def test_a_gather_that_raises_stops_the_call(fails_at):
    """At the binding's agreement (the first gather) or inside the engine (the second)."""
    e, c, t, _ = problem(n=20, d=8, v=50, seed=3)
    calls = []

    def gather(mine):
        calls.append(mine.size)
        if len(calls) == fails_at:
            raise OSError("network down")
        return [mine]

    vp = cs.VocabParallelOptions(0, 50, gather=gather)
    with pytest.raises(cs.CCERuntimeError, match="network down"):
        cs.linear_cross_entropy(e, c, t, vocab_parallel_options=vp, return_grads=True)
    assert len(calls) == fails_at


@pytest.mark.parametrize("differs", ["E's values", "the targets", "the weight's values"])
def test_numpy_ranks_with_different_inputs_fail_every_rank(differs):
    """E, the targets and the class weights must be the same on every rank: the library's
    agreement compares their fingerprints, so one value changed on one rank raises on all."""
    v = 101
    e, c, t, _ = problem(n=20, d=8, v=v, seed=3)
    weight = np.linspace(0.5, 1.5, v).astype(np.float32)
    ranks = Ranks(2)

    def rank(r):
        vp = cs.VocabParallelOptions.from_rank(v, r, 2, ranks.gather(r))
        mine_e, mine_t, mine_w = e.copy(), t.copy(), weight.copy()
        if r == 1:
            if differs == "E's values":
                mine_e.reshape(-1)[11] += 1
            elif differs == "the targets":
                mine_t.reshape(-1)[4] = (mine_t.reshape(-1)[4] + 1) % v
            else:
                mine_w[-1] = 3.0
        return cs.linear_cross_entropy(mine_e, c[vp.start:vp.stop], mine_t, weight=mine_w,
                                       vocab_parallel_options=vp, return_grads=True)

    got = ranks.run(rank)
    assert all(isinstance(x, cs.CCEError) for x in got), got
    assert all(f"ranks disagree on {differs}" in str(x) for x in got), got

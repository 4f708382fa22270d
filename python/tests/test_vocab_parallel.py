"""vocab_parallel_options: 1 to 4 gloo ranks (separate processes, vocab_parallel_worker.py) against
one process, on a vocabulary that no rank count divides, every dtype and the options."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import cce_swift as cs  # noqa: E402
from cce_swift import _lib  # noqa: E402
from cce_swift._shards import partition  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import vocab_parallel_worker as worker  # noqa: E402

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
if not hasattr(_lib.lib(), "cce_cpu_shard_forward"):
    pytest.skip("the library predates the vocabulary-parallel calls (ABI 4)", allow_module_level=True)


def launch(world, tmp_path):
    """Runs `world` ranks of the worker; every rank's results, in rank order."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    procs = [subprocess.Popen([sys.executable, str(HERE / "vocab_parallel_worker.py"), str(r), str(world),
                               str(tmp_path / "init"), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} of {world} failed:\n{out}"
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def one_process(dtype, reduction, options, mode=None):
    """The same case in one process (mode overrides the case's), as the worker computes it."""
    e, c, t, bias, weight = worker.problem(dtype, options)
    e = e.clone().requires_grad_(True)
    c = c.clone().requires_grad_(True)
    bias = None if bias is None else bias.clone().requires_grad_(True)
    kw = worker.kwargs(reduction, options)
    if mode is not None:
        kw["mode"] = mode
    out = cs.linear_cross_entropy(e, c, t, bias, weight=weight, threads=2, **kw)
    loss, lse = out if options.get("return_lse") else (out, None)
    if reduction == "none":
        upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).to(loss.dtype)
        (loss * upstream).sum().backward()
    else:
        loss.backward()
    return {"loss": loss.detach(), "lse": lse, "dE": e.grad, "dC": c.grad, "dB": None if bias is None else bias.grad}


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(b.norm()), 1e-300))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_agree_with_one_process(world, tmp_path):
    ranks = launch(world, tmp_path)
    # The shards tile [0, V) in rank order, each its share.
    assert [r["f32-mean:shard"] for r in ranks] == [partition(worker.V, k, world) for k in range(world)]
    for name, (dtype, reduction, options) in worker.CASES.items():
        mine = one_process(dtype, reduction, options)
        truth = one_process(dtype, reduction, options, mode="exact")
        exact = options.get("mode") == "exact"
        for r, got in enumerate(ranks):
            first, second = got[name]
            # Bitwise run to run, and the same loss, lse and dE on every rank.
            for key in ("loss", "lse", "dE", "dC", "dB"):
                if first[key] is not None:
                    assert torch.equal(first[key], second[key]), f"{name}, rank {r}: {key} differs between two runs"
                    if key in ("loss", "lse", "dE"):
                        assert torch.equal(first[key], ranks[0][name][0][key]), f"{name}: {key} of rank {r} is not rank 0's"
            start, stop = got[name + ":shard"]
            pieces = {"loss": (first["loss"], mine["loss"], truth["loss"]),
                      "dE": (first["dE"], mine["dE"], truth["dE"]),
                      "dC": (first["dC"], mine["dC"][start:stop], truth["dC"][start:stop])}
            if first["lse"] is not None:
                pieces["lse"] = (first["lse"], mine["lse"], truth["lse"])
            if first["dB"] is not None:
                pieces["dB"] = (first["dB"], mine["dB"][start:stop], truth["dB"][start:stop])
            for key, (a, one, t) in pieces.items():
                if a.numel() == 0:
                    continue
                if exact:   # Float64 throughout: loss and lse to 1e-12, gradients to their rounding to e's float32
                    budget = 1e-12 if key in ("loss", "lse") else 1e-7
                    assert rel(a, one) <= budget, f"{name}, rank {r}: {key} {rel(a, one):.2e} from one process"
                elif key in ("loss", "lse"):   # the same formula, the partials merged in Float64
                    assert rel(a, one) <= 1e-6, f"{name}, rank {r}: {key} {rel(a, one):.2e} from one process"
                else:   # each shard filters and estimates on its own blocks: against the truth, as
                    # ParallelAlgebraTests holds the Swift shards (twice one process's error + 1e-4)
                    budget = 2 * rel(one, t) + 1e-4
                    assert rel(a, t) <= budget, f"{name}, rank {r}: {key} {rel(a, t):.2e} from the truth, one process {rel(one, t):.2e}"
    # Each rank asks for its own exchange chunk (37 + 10·rank tokens): every rank must take rank 0's
    # (else their exchanges would not match and the call would fail); the same loss and dE on
    # every rank, within budget.
    dtype, reduction, options = worker.CASES["bf16-mean"]
    truth = one_process(dtype, reduction, options, mode="exact")
    one = one_process(dtype, reduction, options)
    for r, got in enumerate(ranks):
        chunked = got["chunks"]
        assert torch.equal(chunked["loss"], ranks[0]["chunks"]["loss"])
        assert torch.equal(chunked["dE"], ranks[0]["chunks"]["dE"])
        assert rel(chunked["loss"], one["loss"]) <= 1e-6
        assert rel(chunked["dE"], truth["dE"]) <= 2 * rel(one["dE"], truth["dE"]) + 1e-4
        # reduce_e_grad=False: this shard's part; summed by hand it is the whole dE (up to the
        # part's rounding to bf16 before the sum).
        part, summed = got["parts"]
        if world > 1:
            assert rel(part, chunked["dE"]) > 1e-2, "a part should not be the whole dE"
        assert rel(summed, chunked["dE"]) <= 1e-2
        # The forward alone, under no_grad: the fused call's loss and lse to 1e-6.
        loss, lse = got["no_grad"]
        whole = one_process(torch.float32, "mean", {"bias": True, "return_lse": True})
        assert rel(loss, whole["loss"]) <= 1e-6 and rel(lse, whole["lse"]) <= 1e-6, (loss, whole["loss"])
    # Under torch.compile: the eager call's bits (loss, lse and gradients), on every rank.
    for r, got in enumerate(ranks):
        for name in ("bf16-options", "f32-none-lse"):
            if name + ":compiled" not in got:
                continue   # torch < 2.4: no operators
            compiled, eager = got[name + ":compiled"], got[name + ":eager"]
            for key in ("loss", "lse", "dE", "dC", "dB"):
                if eager[key] is not None:
                    assert torch.equal(compiled[key], eager[key]), f"{name}, rank {r}: compiled {key} differs"
    # Bad input on one rank: an error on every rank, no hang.
    # (a target out of range: the library's checks; a shard of c a row too long: the binding's)
    for key, own in (("bad", "target"), ("bad_shape", "this rank's shard holds classes")):
        for r, got in enumerate(ranks):
            bad = got[key]
            assert bad.startswith("CCEValueError"), f"rank {r}: {bad}"
            assert (own if r == world - 1 else f"rank {world - 1} of {world} failed its checks") in bad, bad


def test_options_are_checked_before_any_collective():
    with pytest.raises(TypeError, match="VocabParallelOptions"):
        cs.linear_cross_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.int64),
                                vocab_parallel_options=(0, 4))
    if not dist.is_initialized():
        with pytest.raises(cs.CCEValueError, match="init_process_group"):
            cs.linear_cross_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.int64),
                                    vocab_parallel_options=cs.VocabParallelOptions(0, 4))
    with pytest.raises(TypeError, match="needs gather="):
        import numpy as np

        cs.linear_cross_entropy(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), np.zeros(2, np.int64),
                                vocab_parallel_options=cs.VocabParallelOptions(0, 4))


def test_training_example_across_two_ranks(tmp_path):
    """python/examples/train_vocab_parallel.py, a few steps: the ranks' loss curve is one
    process's (float32: within 1e-5 a step), every rank the same loss and the same body."""
    example = HERE.parent / "examples" / "train_vocab_parallel.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    out = tmp_path / "run.json"
    run = subprocess.run([sys.executable, str(example), "--ranks", "2", "--steps", "6", "--out", str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    record = __import__("json").loads(out.read_text())
    assert record["same_loss"] and record["same_body"]
    assert max(record["rel"]) <= 1e-5, record["rel"]
    assert record["ranks"][1]["shard"][0] == record["ranks"][0]["shard"][1]
    assert record["one"]["loss"][-1] < record["one"]["loss"][0]

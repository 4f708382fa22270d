"""One rank of test_vocab_parallel.py: python vocab_parallel_worker.py RANK WORLD INIT_FILE OUT_DIR.

Joins a gloo process group through INIT_FILE, runs every case of CASES with this rank's shard
of the classifier (twice, for the bit check), and saves what it got to OUT_DIR/rank{RANK}.pt.
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import cce_swift as cs

# name: (dtype, reduction, options); the data of every case comes from problem() below.
CASES = {
    "f32-mean": (torch.float32, "mean", {}),
    "f32-sum-bias": (torch.float32, "sum", {"bias": True}),
    "bf16-mean": (torch.bfloat16, "mean", {}),
    "bf16-options": (torch.bfloat16, "mean", {"bias": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 20.0,
                                              "weight": True, "shift": 1, "lead": (3, 40)}),
    "f16-none": (torch.float16, "none", {"bias": True, "return_lse": True}),
    "f32-none-lse": (torch.float32, "none", {"return_lse": True, "label_smoothing": 0.2}),
    "exact": (torch.float32, "mean", {"bias": True, "mode": "exact", "label_smoothing": 0.1}),
}
N, D, V = 120, 24, 1001   # V = 1001 is no multiple of 2, 3 or 4


def problem(dtype, options, seed=3):
    """LM-like enough: a Zipf-like prior in the last column, so the filter has work to do."""
    g = torch.Generator().manual_seed(seed)
    lead = options.get("lead", (N,))
    e = torch.randn(*lead, D, generator=g) * 2
    e[..., -1] = 1
    c = torch.randn(V, D, generator=g) / D ** 0.5
    c[:, -1] = -1.5 * torch.log(torch.randperm(V, generator=g).double() + 1).float()
    t = torch.randint(0, V, lead, generator=g)
    t[torch.rand(lead, generator=g) < 0.1] = -100
    bias = (torch.randn(V, generator=g) * 0.1) if options.get("bias") else None
    weight = (torch.rand(V, generator=g) * 2) if options.get("weight") else None
    cast = (lambda x: None if x is None else x.to(dtype))
    return cast(e), cast(c), t, cast(bias), weight


def kwargs(reduction, options):
    out = {k: options[k] for k in ("label_smoothing", "z_loss", "softcap", "shift", "mode", "return_lse") if k in options}
    out["reduction"] = reduction
    return out


def run_case(dtype, reduction, options, vp, fn=cs.linear_cross_entropy):
    e, c, t, bias, weight = problem(dtype, options)
    start, stop = vp.start, vp.stop
    e = e.clone().requires_grad_(True)
    c = c[start:stop].clone().requires_grad_(True)
    bias = None if bias is None else bias[start:stop].clone().requires_grad_(True)
    out = fn(e, c, t, bias, weight=weight, vocab_parallel_options=vp, threads=2, **kwargs(reduction, options))
    loss, lse = out if options.get("return_lse") else (out, None)
    upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).to(loss.dtype) if reduction == "none" else None
    (loss * upstream).sum().backward() if upstream is not None else loss.backward()
    return {"loss": loss.detach(), "lse": lse, "dE": e.grad, "dC": c.grad, "dB": None if bias is None else bias.grad}


def main():
    rank, world, init_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results = {}
    for name, (dtype, reduction, options) in CASES.items():
        vp = cs.VocabParallelOptions.from_vocab(V)
        results[name] = [run_case(dtype, reduction, options, vp) for _ in range(2)]
        results[name + ":shard"] = (vp.start, vp.stop)
    # Chunks of its own size on each rank (37 + 10·rank tokens): every rank takes rank 0's, and
    # the results are those of rank 0's chunk on every rank.
    dtype, reduction, options = CASES["bf16-mean"]
    vp = cs.VocabParallelOptions.from_vocab(V, exchange_chunk=37 + 10 * rank)
    results["chunks"] = run_case(dtype, reduction, options, vp)
    # dE's parts left to the caller, then summed in rank order by hand: reduce_e_grad's bits.
    vp = cs.VocabParallelOptions.from_vocab(V, reduce_e_grad=False, exchange_chunk=37)
    part = run_case(dtype, reduction, options, vp)
    from cce_swift import _vocab_parallel
    summed = part["dE"].float()   # the part in e's dtype (bf16): not the float32 sum, so compare loosely
    _vocab_parallel.ordered_sum(summed.view(-1).numpy(), _vocab_parallel.torch_gather(None))
    results["parts"] = (part["dE"], summed)
    # Without gradients: the forward alone gives the fused call's loss and lse.
    e, c, t, bias, weight = problem(torch.float32, {"bias": True})
    vp = cs.VocabParallelOptions.from_vocab(V)
    with torch.no_grad():
        results["no_grad"] = cs.linear_cross_entropy(e, c[vp.start:vp.stop], t, bias[vp.start:vp.stop],
                                                     vocab_parallel_options=vp, return_lse=True, threads=2)
    # Under torch.compile (fullgraph, aot_eager): the registered shard operators, the eager
    # call's bits, for a fused case and for reduction none with an upstream gradient; and in a
    # group of its own (every rank: the whole world, by name).
    from cce_swift import _compile
    if _compile.AVAILABLE:
        group = dist.new_group(list(range(world)))
        for name in ("bf16-options", "f32-none-lse"):
            dtype, reduction, options = CASES[name]
            vp = cs.VocabParallelOptions.from_vocab(V, group=group if name == "f32-none-lse" else None)
            compiled = torch.compile(lambda *a, **k: cs.linear_cross_entropy(*a, **k), backend="aot_eager",
                                     fullgraph=True)
            results[name + ":compiled"] = run_case(dtype, reduction, options, vp, fn=compiled)
            results[name + ":eager"] = run_case(dtype, reduction, options, vp)
    # A rank whose inputs fail their checks: every rank gets an error, none hangs.
    e, c, t, _, _ = problem(torch.float32, {})
    vp = cs.VocabParallelOptions.from_vocab(V)
    if rank == world - 1:
        t = t.clone()
        t[0] = V + 5
    try:
        cs.linear_cross_entropy(e.requires_grad_(True), c[vp.start:vp.stop], t, vocab_parallel_options=vp)
        results["bad"] = "no error"
    except cs.CCEError as err:
        results["bad"] = f"{type(err).__name__}: {err}"
    # A rank whose shard of c has a row too many (checked in Python, before any exchange).
    c_mine = c[vp.start:vp.stop]
    if rank == world - 1:
        c_mine = c[vp.start:vp.stop + 1] if vp.stop < V else c[vp.start - 1:vp.stop]
    try:
        cs.linear_cross_entropy(e, c_mine, problem(torch.float32, {})[2], vocab_parallel_options=vp)
        results["bad_shape"] = "no error"
    except cs.CCEError as err:
        results["bad_shape"] = f"{type(err).__name__}: {err}"
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

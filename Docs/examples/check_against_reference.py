#!/usr/bin/env python3
"""Worked example: check PyTorch's loss and gradients (and a GPU kernel's, where one exists)
against `cce reference`, on the user's own tensors.

    swift build -c release --product cce
    python3 Docs/examples/check_against_reference.py            # f32 inputs
    python3 Docs/examples/check_against_reference.py --dtype bf16

Runs from any folder. The cce tool is, in order: --cce PATH; else $CCE; else `cce` on PATH;
else .build/release/cce of the repository this script is in (found from the script's own
location, not the current folder). --print-cce prints the one it would use and exits.

Needs numpy and torch; bf16 inputs also need ml_dtypes (pip install ml_dtypes), which is how
NumPy stores bfloat16. Steps:
 1. build LM-like tensors E (B, T, D), C (V, D), targets (B, T) with some ignored positions;
 2. save them as .npy;
 3. `cce reference --mode exact` (Float64 truth) and `cce reference` (the default mode);
 4. PyTorch's own F.cross_entropy gradients, in float32 and in the storage type, saved as .npy;
 5. `cce compare` of each against the truth, with budgets; and numpy's own view of the errors;
 6. with --cuda and a GPU: `cce reference --backend cuda` (the cuda/ kernels), compared the same way.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

# numpy and torch are imported by main() once the options are read, so that --help and
# --print-cce work without them.
np = torch = F = None


def _import_numerics():
    global np, torch, F
    import numpy as np
    import torch
    import torch.nn.functional as F


def repository_cce():
    """.build/release/cce of the repository holding this script (Docs/examples/ -> root)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    return os.path.join(root, ".build", "release", "cce")


def find_cce(explicit):
    """The cce tool: --cce PATH, else $CCE, else `cce` on PATH, else repository_cce().
    Exits with one line naming what was tried when none is an executable file."""
    def usable(p):
        return os.path.isfile(p) and os.access(p, os.X_OK)
    if explicit:
        if not usable(explicit):
            sys.exit(f"error: --cce {explicit}: not an executable file")
        return explicit
    env = os.environ.get("CCE", "")
    if env:
        if not usable(env):
            sys.exit(f"error: $CCE={env}: not an executable file")
        return env
    on_path = shutil.which("cce")
    if on_path:
        return on_path
    built = repository_cce()
    if usable(built):
        return built
    sys.exit(f"error: cce not found: no --cce PATH, no $CCE, no cce on PATH, and no {built} "
             f"(build it: swift build -c release --product cce)")


def lm_like(n_seq, t, d, v, s=4.0, alpha=1.5, seed=0):
    """Docs/LMLIKE.md (torch's RNG: the same distribution, not the same numbers): Gaussian C with a Zipf-like log-prior column, E with scale s."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(v, d, generator=g) / (d - 1) ** 0.5
    c[:, -1] = -alpha * torch.log(torch.randperm(v, generator=g).double() + 1).float()
    e = torch.randn(n_seq, t, d, generator=g) * s
    e[..., -1] = 1.0
    with torch.no_grad():
        p = torch.softmax(e.reshape(-1, d) @ c.T, dim=-1)
    targets = torch.multinomial(p, 1, generator=g).reshape(n_seq, t)
    targets[torch.rand(n_seq, t, generator=g) < 0.1] = -100  # some ignored positions
    return e, c, targets


def save(path, tensor, dtype):
    x = tensor.detach().float().numpy()
    if dtype == "bf16":
        import ml_dtypes
        x = x.astype(ml_dtypes.bfloat16)
    np.save(path, x)


def torch_gradients(e, c, targets, compute_dtype, out):
    """PyTorch's F.cross_entropy over materialized logits; gradients of the mean loss."""
    e = e.detach().to(compute_dtype).requires_grad_()
    c = c.detach().to(compute_dtype).requires_grad_()
    d = e.shape[-1]
    logits = e.reshape(-1, d) @ c.T
    loss = F.cross_entropy(logits.float(), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    lse = torch.logsumexp(logits.float(), dim=-1).reshape(targets.shape)
    lse[targets == -100] = float("nan")
    os.makedirs(out, exist_ok=True)
    np.save(f"{out}/loss.npy", np.float32(loss.item()))
    np.save(f"{out}/lse.npy", lse.detach().numpy().astype(np.float32))
    np.save(f"{out}/dE.npy", e.grad.float().numpy())
    np.save(f"{out}/dC.npy", c.grad.float().numpy())


def run(cmd):
    print("$", " ".join(cmd))
    r = subprocess.run(cmd, text=True, capture_output=True)
    print(r.stdout.rstrip())
    if r.stderr.strip():
        print(r.stderr.rstrip())
    return r.returncode


def rel(a, b):
    m = ~np.isnan(b)
    return float(np.linalg.norm((a - b)[m]) / np.linalg.norm(b[m]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cce", default=None, metavar="PATH",
                    help="the cce tool (default: $CCE, else cce on PATH, else this repository's .build/release/cce)")
    ap.add_argument("--print-cce", action="store_true", help="print the cce tool that would be used, and exit")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--shape", default="4,64,256,5000", help="B,T,D,V")
    ap.add_argument("--cuda", action="store_true", help="also run cce reference --backend cuda")
    ap.add_argument("--dir", default=None, help="working folder (default: a temporary one)")
    a = ap.parse_args()
    a.cce = find_cce(a.cce)
    if a.print_cce:
        print(a.cce)
        return
    _import_numerics()
    b, t, d, v = map(int, a.shape.split(","))
    work = a.dir or tempfile.mkdtemp(prefix="cce-example-")
    os.makedirs(work, exist_ok=True)
    e, c, targets = lm_like(b, t, d, v)
    save(f"{work}/E.npy", e, a.dtype)
    save(f"{work}/C.npy", c, a.dtype)
    np.save(f"{work}/T.npy", targets.numpy().astype(np.int64))
    # The stored values (rounded to bf16 where asked) are what every method sees.
    if a.dtype == "bf16":
        e, c = e.bfloat16().float(), c.bfloat16().float()

    inputs = ["--embeddings", f"{work}/E.npy", "--classifier", f"{work}/C.npy", "--targets", f"{work}/T.npy"]
    status = run([a.cce, "reference", *inputs, "--mode", "exact", "--out", f"{work}/truth"])
    status |= run([a.cce, "reference", *inputs, "--out", f"{work}/cce"])
    torch_gradients(e, c, targets, torch.float32, f"{work}/torch-f32")
    if a.dtype == "bf16":
        torch_gradients(e, c, targets, torch.bfloat16, f"{work}/torch-bf16")
    # Budgets: relative norm error. The CPU engine's default mode must stay within 1e-5 on
    # f32 inputs and 5e-3 on bf16 inputs (Docs/NUMERICS.md); PyTorch f32 about as close.
    budget = "1e-5" if a.dtype == "f32" else "5e-3"
    print("\n# The CPU engine's default mode against the Float64 truth")
    status |= run([a.cce, "compare", "--reference", f"{work}/truth", "--candidate", f"{work}/cce", "--budget", budget])
    print("\n# PyTorch float32 against the Float64 truth")
    status |= run([a.cce, "compare", "--reference", f"{work}/truth", "--candidate", f"{work}/torch-f32", "--budget", "1e-4"])
    if a.dtype == "bf16":
        print("\n# PyTorch in bfloat16 against the Float64 truth (no budget: for information)")
        run([a.cce, "compare", "--reference", f"{work}/truth", "--candidate", f"{work}/torch-bf16"])
    if a.cuda:
        status |= run([a.cce, "reference", *inputs, "--backend", "cuda", "--out", f"{work}/cuda"])
        print("\n# The CUDA kernels against the Float64 truth")
        # The GPU returns gradients in the input type; its f32 path is checked to 1e-4 (Docs/CUDA.md).
        gpu_budget = "1e-4" if a.dtype == "f32" else "1.6e-2"
        status |= run([a.cce, "compare", "--reference", f"{work}/truth", "--candidate", f"{work}/cuda", "--budget", gpu_budget])

    # The same numbers from Python, loading the .npy files.
    print("\n# relative errors from numpy")
    for name in ["dE", "dC"]:
        truth = np.load(f"{work}/truth/{name}.npy")
        row = {m: rel(np.load(f"{work}/{m}/{name}.npy").astype(np.float64), truth)
               for m in ["cce", "torch-f32", "torch-bf16", "cuda"] if os.path.exists(f"{work}/{m}/{name}.npy")}
        print(name, "  ".join(f"{m} {x:.2e}" for m, x in row.items()))
    print(f"\nfiles in {work}; {'all budgets held' if status == 0 else 'A BUDGET WAS EXCEEDED'}")
    sys.exit(1 if status else 0)


if __name__ == "__main__":
    main()

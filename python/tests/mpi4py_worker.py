"""One rank of test_vocab_parallel_mpi4py.py under a real mpirun: NumPy arrays, mpi4py's
comm.allgather as the gather. Writes rank{r}.npz (its results, and on rank 0 one process's)
to the folder in argv[1]; argv[2] is the case: "ok", or "bad" (rank 1 passes a target out of
range, and every rank writes the error it got to rank{r}.txt)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

import cce_swift as cs
from conftest import problem, weights

out, case = Path(sys.argv[1]), sys.argv[2]
comm = MPI.COMM_WORLD
v = 1001   # divisible by none of 2, 3, 4
e, c, t, b = problem(n=260, d=24, v=v, seed=11, bias=True)
kw = dict(weight=weights(v), label_smoothing=0.1, z_loss=1e-4, return_lse=True, return_grads=True, threads=1)
vp = cs.VocabParallelOptions.from_rank(v, comm.rank, comm.size, gather=comm.allgather)
mine = t.copy()
if case == "bad" and comm.rank == 1:
    mine[7] = v + 3
try:
    runs = [cs.linear_cross_entropy(e, c[vp.start:vp.stop], mine, b[vp.start:vp.stop], vocab_parallel_options=vp, **kw)
            for _ in range(2)]
except cs.CCEError as error:
    (out / f"rank{comm.rank}.txt").write_text(str(error))
    sys.exit(0)
(loss, lse, g), (loss2, _, g2) = runs
saved = dict(start=vp.start, stop=vp.stop, loss=loss, lse=lse, dE=g.e, dC=g.c, dB=g.bias,
             same=np.array([np.array_equal(loss, loss2) and np.array_equal(g.e, g2.e) and np.array_equal(g.c, g2.c)]))
if comm.rank == 0:
    one_loss, one_lse, one = cs.linear_cross_entropy(e, c, t, b, **kw)
    saved.update(one_loss=one_loss, one_lse=one_lse, one_dE=one.e, one_dC=one.c, one_dB=one.bias)
np.savez(out / f"rank{comm.rank}.npz", **saved)

"""vocab_parallel_options with NumPy arrays under a real mpirun, mpi4py's comm.allgather as
the gather (mpi4py_worker.py): 2 and 3 ranks against one process, and a rank with a bad
target failing every rank without a hang. Skipped where mpirun or mpi4py is missing
(scripts/test_python.sh installs mpi4py where mpirun is on PATH)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py")
MPIRUN = shutil.which("mpirun")
if MPIRUN is None:
    pytest.skip("mpirun is not on PATH (scripts/setup.sh installs openmpi-bin)", allow_module_level=True)

HERE = Path(__file__).resolve().parent


def launch(ranks, case, tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + [p for p in [env.get("PYTHONPATH")] if p])
    root = ["--allow-run-as-root"] if os.getuid() == 0 else []
    cmd = [MPIRUN, "--oversubscribe", *root, "-np", str(ranks), sys.executable, str(HERE / "mpi4py_worker.py"),
           str(tmp_path), case]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"mpirun failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.mark.parametrize("ranks", [2, 3])
def test_mpi4py_ranks_agree_with_one_process(ranks, tmp_path):
    launch(ranks, "ok", tmp_path)
    got = [np.load(tmp_path / f"rank{r}.npz") for r in range(ranks)]
    one = got[0]
    assert [int(x["start"]) for x in got] + [int(got[-1]["stop"])] == sorted(
        {int(x["start"]) for x in got} | {int(got[-1]["stop"])})
    for r, x in enumerate(got):
        assert x["same"][0], f"rank {r}: not the same bits run to run"
        # Loss, lse and dE: the same bits on every rank.
        for key in ("loss", "lse", "dE"):
            assert np.array_equal(x[key], one[key]), f"rank {r}: {key} differs from rank 0's"
    assert rel(one["loss"], one["one_loss"]) <= 1e-6
    assert rel(one["lse"], one["one_lse"]) <= 1e-6
    assert rel(one["dE"], one["one_dE"]) <= 1e-5
    assert rel(np.concatenate([x["dC"] for x in got]), one["one_dC"]) <= 1e-5
    assert rel(np.concatenate([x["dB"] for x in got]), one["one_dB"]) <= 1e-5


def test_mpi4py_rank_with_bad_target_fails_every_rank(tmp_path):
    launch(3, "bad", tmp_path)
    text = [(tmp_path / f"rank{r}.txt").read_text() for r in range(3)]
    assert "target" in text[1], text[1]
    assert all("rank 1 of 3 failed its checks" in text[r] for r in (0, 2)), text

"""compare(): the rules of Sources/CCEReference/Compare.swift, and the same report text as
`cce compare` on the same folders; reference() against `cce reference --mode exact`.
The command-line checks run when the cce executable has been built (.build/release/cce)."""
from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cce_swift as cs
from conftest import problem

ROOT = Path(__file__).resolve().parents[2]
CCE = ROOT / ".build" / "release" / "cce"
needs_cli = pytest.mark.skipif(not CCE.exists(), reason="the cce executable is not built (swift build -c release)")


def test_rules():
    ref = {"a": np.array([1.0, 2.0, np.nan, 4.0]), "b": np.zeros((2, 2)), "c": np.ones(3), "only": np.ones(1)}
    cand = {"a": np.array([1.0, 2.5, np.nan, 4.0]), "b": np.zeros((2, 2)), "c": np.array([1.0, np.nan, 1.0]),
            "extra": np.ones(2)}
    r = cs.compare(ref, cand, budgets={"a": 0.2, "*": 1e-3}, max_abs={"b": 0.0})
    assert [x.name for x in r.rows] == ["a", "b", "c"]
    a = r["a"]
    assert a.max_abs == 0.5 and a.worst == 1 and (a.reference_value, a.candidate_value) == (2.0, 2.5)
    assert a.relative == pytest.approx(0.5 / math.sqrt(1 + 4 + 16))
    assert a.passed and a.relative_budget == 0.2
    assert r["b"].relative == 0.0 and r["b"].passed and r["b"].absolute_budget == 0.0
    assert math.isinf(r["c"].max_abs) and math.isinf(r["c"].relative) and not r["c"].passed, "NaN on one side"
    assert r.only_in_reference == ["only"]
    assert not r.passed and [x.name for x in r.failed] == ["c"]
    assert r["c"].non_finite == 1 and r["c"].first_non_finite == 1, "the candidate's NaN where the reference has none"
    assert r.summary == ("compare failed: c (1 non-finite value, the first at [1], over budget); "
                         "missing from the candidate: only (--allow-non-finite, --allow-missing to let these through)")
    lenient = cs.compare(ref, cand, budgets={"a": 0.2, "c": float("inf")}, allow_missing=True, allow_non_finite=True)
    assert lenient.passed and lenient.summary == "3 tensors compared, none over budget"
    shapes = cs.compare({"x": np.zeros(3)}, {"x": np.zeros(4)})
    assert shapes["x"].problem == "shape (4,) in the candidate, (3,) in the reference" and not shapes.passed
    with pytest.raises(ValueError, match="none of the reference's arrays"):
        cs.compare({"x": np.zeros(1)}, {"y": np.zeros(1)})
    with pytest.raises(ValueError, match="a budget names z"):
        cs.compare({"x": np.zeros(1)}, {"x": np.zeros(1)}, budgets={"z": 1.0})
    with pytest.raises(ValueError, match="is not NAME=X or X"):
        cs.compare({"x": np.zeros(1)}, {"x": np.zeros(1)}, budgets=["x=abc"])
    with pytest.raises(ValueError, match="expected floating-point"):
        cs.compare({"x": np.zeros(1, dtype=np.int64)}, {"x": np.zeros(1)})
    # CLI-style budget strings.
    assert cs.compare(ref, cand, budgets=["a=0.2", "1e-3"])["a"].relative_budget == 0.2


def write(folder: Path, arrays: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in arrays.items():
        np.save(folder / f"{k}.npy", v)


@needs_cli
def test_report_text_is_the_cli_s(tmp_path):
    e, c, t, b = problem(bias=True, seed=2)
    ref = cs.reference(e, c, t, b)
    loss, lse, g = cs.linear_cross_entropy(e, c, t, bias=b, return_lse=True, return_grads=True, filter_eps=2.0**-8)
    cand = {"loss": np.array(loss), "dE": g.e, "dC": g.c, "dBias": g.bias,
            "lse": np.where(np.isnan(ref["lse"]), np.nan, 1.0).astype(np.float32)}
    write(tmp_path / "ref", ref)
    write(tmp_path / "cand", cand)
    os.remove(tmp_path / "cand" / "dBias.npy")
    args = ["--budget", "dE=5e-3", "--budget", "1e-4", "--max-abs", "loss=1e-5"]
    out = subprocess.run([str(CCE), "compare", "--reference", str(tmp_path / "ref"), "--candidate", str(tmp_path / "cand"),
                          *args], capture_output=True, text=True, timeout=120)
    report = cs.compare(tmp_path / "ref", tmp_path / "cand", budgets=["dE=5e-3", "1e-4"], max_abs=["loss=1e-5"])
    assert out.stdout.rstrip("\n") == str(report)
    assert (out.returncode == 0) == report.passed
    if not report.passed:
        assert report.summary in out.stderr


@needs_cli
def test_reference_equals_cce_reference_exact(tmp_path):
    e, c, t, b = problem(bias=True, lead=(3, 7), seed=3)
    for name, x in (("E", e), ("C", c), ("T", t), ("B", b)):
        np.save(tmp_path / f"{name}.npy", x)
    out = subprocess.run([str(CCE), "reference", "--embeddings", str(tmp_path / "E.npy"), "--classifier",
                          str(tmp_path / "C.npy"), "--targets", str(tmp_path / "T.npy"), "--bias", str(tmp_path / "B.npy"),
                          "--mode", "exact", "--shift", "1", "--reduction", "none", "--label-smoothing", "0.1",
                          "--softcap", "4", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    r = cs.reference(e, c, t, b, shift=1, reduction="none", label_smoothing=0.1, softcap=4.0)
    for k, v in r.items():
        cli = np.load(tmp_path / "out" / f"{k}.npy")
        assert cli.dtype == np.float64 and cli.shape == v.shape, k
        assert np.array_equal(cli, v, equal_nan=True), k

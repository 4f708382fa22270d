"""The conformance suite (python -m cce_swift.conformance): this engine and the materialized
baseline pass it within the budgets; broken implementations fail the cases meant to catch
them; options a function lacks are reported as unsupported."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import cce_swift as cs  # noqa: E402
from cce_swift import conformance  # noqa: E402

FAST = [c for c in conformance.cases() if c.v <= 4097 and c.n <= 129]


def run(fn, case, dtype="f32"):
    r = conformance.run_case(fn, case, dtype, "cpu")
    return r


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_engine_and_baseline_pass(case, dtype):
    for fn in (cs.linear_cross_entropy, conformance.baseline):
        r = run(fn, case, dtype)
        assert r["status"] == "pass", (fn.__name__, r)


def naive(e, c, targets, bias=None, ignore_index=-100, reduction="mean", **kw):
    """exp without the max: overflows on a large common offset."""
    z = (e @ c.T).float() + (0 if bias is None else bias.float())
    lse = torch.log(torch.exp(z).sum(-1))
    t = targets.clamp(min=0)
    loss = (lse - z.gather(-1, t[:, None])[:, 0]) * (targets != ignore_index)
    return loss.sum() / (targets != ignore_index).sum() if reduction == "mean" else loss.sum()


def no_bias_gradient(e, c, targets, bias=None, **kw):
    """Forgets the bias's gradient (a detached bias)."""
    return cs.linear_cross_entropy(e, c, targets, bias=None if bias is None else bias.detach(), **kw)


def rounds_loss(e, c, targets, **kw):
    """Returns the loss rounded to bfloat16 (a truncated accumulator)."""
    return cs.linear_cross_entropy(e, c, targets, **kw).to(torch.bfloat16).float() * 1.01


def only_mean(e, c, targets, bias=None, ignore_index=-100):
    return F.cross_entropy((e @ c.T).float() + (0 if bias is None else bias.float()), targets, ignore_index=ignore_index)


def by_name(name):
    return next(c for c in conformance.cases() if c.name == name)


def test_broken_implementations_fail():
    assert run(naive, by_name("plain"))["status"] == "pass"
    assert run(naive, by_name("offset +100"))["status"] in ("FAIL", "error")
    r = run(no_bias_gradient, by_name("bias"))
    assert r["status"] == "error" and "dBias" in r["message"]
    r = run(rounds_loss, by_name("plain"))
    assert r["status"] == "FAIL" and not r["tensors"]["loss"]["passed"]


def test_missing_options_are_unsupported():
    assert run(only_mean, by_name("plain"))["status"] == "pass"
    assert run(only_mean, by_name("softcap"))["status"] == "unsupported"
    assert run(only_mean, by_name("weight"))["status"] == "unsupported"


def test_command_line(capsys, tmp_path):
    rc = conformance.main(["cce_swift:linear_cross_entropy", "--cases", "softcap", "--dtypes", "f32,bf16",
                           "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "softcap+zloss" in out and "4 pass, 0 FAIL, 0 error, 0 unsupported" in out
    assert (tmp_path / "r.json").exists()
    assert conformance.main(["cce_swift.conformance:baseline", "--list"]) == 0
    rc = conformance.main(["test_conformance:naive", "--cases", "offset +100", "--dtypes", "f32"])
    assert rc == 1

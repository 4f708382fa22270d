"""cce_cpu.h as a C program sees it: compiled with the system C compiler and linked with the
library the package loads. The struct layout must be the one the ctypes binding declares,
and a call from C must give what the binding gives."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cce_swift as cs
from cce_swift import _lib

ROOT = Path(__file__).resolve().parents[2]
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def header_dir() -> Path:
    packaged = Path(cs.__file__).parent / "cce_cpu.h"
    if packaged.exists():
        return packaged.parent
    return ROOT / "Sources" / "CCECPU" / "include"


def compile_and_run(src: Path, exe: Path) -> dict:
    """Compiles the C program `src` against the header and the library the package loads, runs
    it, and returns its output lines "key value" as a dict."""
    lib = Path(cs.library_path())
    build = subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-I", str(header_dir()), str(src), "-o", str(exe),
                            str(lib), f"-Wl,-rpath,{lib.parent}"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return dict(line.split(" ", 1) for line in run.stdout.strip().splitlines())


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_c_program_against_the_header(tmp_path):
    fields = [name for name, _ in _lib.Options._fields_]
    offsets = "\n".join(f'  printf("{f} %zu\\n", offsetof(cce_cpu_options, {f}));' for f in fields)
    src = tmp_path / "main.c"
    src.write_text(f"""
#include <stddef.h>
#include <stdio.h>
#include "cce_cpu.h"
int main(void) {{
  printf("size %zu\\n", sizeof(cce_cpu_options));
{offsets}
  float E[6] = {{0.5f, -1.0f, 2.0f, 0.25f, -0.75f, 1.5f}};
  float C[8] = {{1.0f, 0.0f, 0.0f, 1.0f, -1.0f, 0.5f, 0.25f, -2.0f}};
  int64_t t[3] = {{0, 3, -100}};
  cce_cpu_options o;
  cce_cpu_default_options(&o);
  o.label_smoothing = 0.1;
  printf("saved %d\\n", (int)o.saved_logits_per_row);
  double loss = 0;
  float dE[6];
  int rc = cce_cpu_loss_and_gradients(E, C, NULL, t, 3, 2, 4, CCE_CPU_F32, CCE_CPU_F32, CCE_CPU_F32, NULL, &o,
                                      NULL, &loss, NULL, dE, NULL, NULL, CCE_CPU_F32, CCE_CPU_F32, CCE_CPU_F32, NULL);
  printf("rc %d\\nloss %.17g\\ndE0 %.9g\\n", rc, loss, dE[0]);
  o.label_smoothing = 2;
  rc = cce_cpu_forward(E, C, NULL, t, 3, 2, 4, CCE_CPU_F32, CCE_CPU_F32, 0, NULL, &o, &loss, NULL, NULL);
  printf("error %d %s\\n", rc, cce_cpu_last_error());
  return 0;
}}
""")
    out = compile_and_run(src, tmp_path / "main")
    assert int(out["size"]) == ctypes.sizeof(_lib.Options) == 88
    for name in fields:
        assert int(out[name]) == getattr(_lib.Options, name).offset, name
    assert out["rc"] == "0"
    assert out["saved"] == str(_lib.default_options().saved_logits_per_row) == "2048"
    e = np.array([0.5, -1.0, 2.0, 0.25, -0.75, 1.5], np.float32).reshape(3, 2)
    c = np.array([1.0, 0.0, 0.0, 1.0, -1.0, 0.5, 0.25, -2.0], np.float32).reshape(4, 2)
    loss, g = cs.linear_cross_entropy(e, c, np.array([0, 3, -100]), label_smoothing=0.1, return_grads=True)
    assert float(out["loss"]) == pytest.approx(float(loss), rel=1e-7)
    assert float(out["dE0"]) == g.e[0, 0]
    assert out["error"].startswith("8 invalid option: labelSmoothing must be in [0, 1]")


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_shard_call_from_c_with_its_gather(tmp_path):
    """The vocabulary-parallel entry point from C (ABI 4), one rank: its gather copies this rank's
    values; the shard holding the whole vocabulary gives the plain fused call's loss and dE bits.
    A gather that fails stops the call with BACKEND (11) and writes no loss."""
    if not hasattr(_lib.lib(), "cce_cpu_shard_loss_and_gradients"):
        pytest.skip("the library predates ABI 4")
    src = tmp_path / "shard.c"
    src.write_text(r"""
#include <stdio.h>
#include <string.h>
#include "cce_cpu.h"
static int calls = 0;
static int gather1(const void *mine, int64_t count, int dtype, void *all, void *user) {
  calls++;
  if (user) return 7;
  memcpy(all, mine, (size_t)count * (dtype == CCE_CPU_F64 ? 8 : 4));
  return 0;
}
int main(void) {
  float E[6] = {0.5f, -1.0f, 2.0f, 0.25f, -0.75f, 1.5f};
  float C[10] = {1.0f, 0.0f, 0.0f, 1.0f, -1.0f, 0.5f, 0.25f, -2.0f, 0.5f, 0.5f};
  int64_t t[3] = {0, 4, -100};
  cce_cpu_options o;
  cce_cpu_default_options(&o);
  o.label_smoothing = 0.1;
  double loss = 0, shard_loss = 0;
  float dE[6], dE2[6], dC[10];
  int rc = cce_cpu_loss_and_gradients(E, C, NULL, t, 3, 2, 5, CCE_CPU_F32, CCE_CPU_F32, 0, NULL, &o, NULL, &loss,
                                      NULL, dE, NULL, NULL, CCE_CPU_F32, 0, 0, NULL);
  int rc2 = cce_cpu_shard_loss_and_gradients(E, C, NULL, t, 3, 2, 5, 0, 5, 1, CCE_CPU_F32, CCE_CPU_F32, 0, NULL, &o,
                                             0, NULL, &shard_loss, NULL, dE2, dC, NULL, CCE_CPU_F32, CCE_CPU_F32, 0,
                                             NULL, gather1, NULL);
  printf("rc %d %d\n", rc, rc2);
  printf("same %d %d\n", loss == shard_loss, memcmp(dE, dE2, sizeof dE) == 0);
  printf("calls %d\n", calls);
  double untouched = -1;
  int rc3 = cce_cpu_shard_loss_and_gradients(E, C, NULL, t, 3, 2, 5, 0, 5, 1, CCE_CPU_F32, CCE_CPU_F32, 0, NULL, &o,
                                             0, NULL, &untouched, NULL, dE2, dC, NULL, CCE_CPU_F32, CCE_CPU_F32, 0,
                                             NULL, gather1, (void *)1);
  printf("failed %d %g %s\n", rc3, untouched, cce_cpu_last_error());
  return 0;
}
""")
    out = compile_and_run(src, tmp_path / "shard")
    assert out["rc"] == "0 0"
    assert out["same"] == "1 1"
    assert out["calls"] == "2"   # the agreement, then the one chunk's partials (one rank: no bound)
    assert out["failed"].startswith("11 -1 the gather callback returned 7"), out["failed"]


@pytest.mark.skipif(CC is None, reason="no C compiler")
def test_cuda_header_beside_the_cpu_header(tmp_path):
    """cuda/cce_cuda.h compiles as C together with cce_cpu.h (no CUDA needed: it is plain C), its
    cce_options has the layout the CUDA binding (cce_swift._cuda) declares, and the per-class
    weight is passed as in cce_cpu.h: `const float *weight` just before the options, in
    cce_forward_weighted and cce_backward_weighted (checked by assigning the declared functions
    to pointers of the expected types: a mismatch is a compile error under -Werror)."""
    pytest.importorskip("torch")
    from cce_swift import _cuda

    cuda_include = ROOT / "cuda" / "include"
    fields = [name for name, _ in _cuda.Options._fields_]
    offsets = "\n".join(f'  printf("{f} %zu\\n", offsetof(cce_options, {f}));' for f in fields)
    src = tmp_path / "both.c"
    src.write_text(f"""
#include <stddef.h>
#include <stdio.h>
#include "cce_cpu.h"
#include "cce_cuda.h"
typedef int (*fwd_t)(const void *, const void *, const void *, const int64_t *, int64_t, int64_t, int64_t, int,
                     const float *weight, const cce_options *, float *, float *, void *, size_t, void *);
typedef int (*bwd_t)(const void *, const void *, const void *, const int64_t *, int64_t, int64_t, int64_t, int,
                     const float *weight, const cce_options *, const float *, const float *, void *, void *,
                     void *, void *, size_t, int64_t *, void *);
typedef int (*cpu_fwd_t)(const void *, const void *, const void *, const int64_t *, int64_t, int64_t, int64_t,
                         int, int, int, const float *weight, const cce_cpu_options *, double *, double *,
                         cce_cpu_state **);
int main(void) {{
  fwd_t f = cce_forward_weighted;
  bwd_t b = cce_backward_weighted;
  cce_forward_weighted_fn f2 = cce_forward_weighted;
  cce_backward_weighted_fn b2 = cce_backward_weighted;
  cpu_fwd_t c = cce_cpu_forward;
  printf("ptrs %d\\n", (f != 0) + (b != 0) + (f2 != 0) + (b2 != 0) + (c != 0));
  printf("size %zu\\n", sizeof(cce_options));
{offsets}
  return 0;
}}
""")
    obj = tmp_path / "both.o"
    build = subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-I", str(header_dir()), "-I", str(cuda_include),
                            "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    # The offsets: compiled into a program of their own (the functions above are not linked).
    probe = tmp_path / "probe.c"
    probe.write_text(f"""
#include <stddef.h>
#include <stdio.h>
#include "cce_cpu.h"
#include "cce_cuda.h"
int main(void) {{
  printf("size %zu\\n", sizeof(cce_options));
{offsets}
  printf("codes %d%d%d %d%d%d\\n", (int)CCE_F32 == (int)CCE_CPU_F32, (int)CCE_F16 == (int)CCE_CPU_F16,
         (int)CCE_BF16 == (int)CCE_CPU_BF16, (int)CCE_REDUCE_NONE == (int)CCE_CPU_REDUCE_NONE,
         (int)CCE_REDUCE_SUM == (int)CCE_CPU_REDUCE_SUM, (int)CCE_REDUCE_MEAN == (int)CCE_CPU_REDUCE_MEAN);
  return 0;
}}
""")
    exe = tmp_path / "probe"
    build = subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-I", str(header_dir()), "-I", str(cuda_include),
                            str(probe), "-o", str(exe)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    out = dict(line.split(" ", 1) for line in run.stdout.strip().splitlines())
    assert int(out["size"]) == ctypes.sizeof(_cuda.Options) == 56
    assert out["codes"] == "111 111"
    for name in fields:
        assert int(out[name]) == getattr(_cuda.Options, name).offset, name

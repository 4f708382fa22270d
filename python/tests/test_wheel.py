"""The self-contained wheel (scripts/build_wheel.sh): when the loaded library came with its
dependencies bundled in cce_swift/lib, the process maps no Swift runtime and none of the
machine's own copies of the bundled libraries: it would run where no Swift toolchain (nor
OpenBLAS, libnuma, hwloc) is installed. Skipped for a library built in the repository."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cce_swift as cs
from cce_swift import _lib


def mapped() -> set:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if line.count("/")}


def test_bundled_library_needs_no_toolchain():
    library = Path(cs.library_path())
    bundled = library.parent / "lib"
    if not bundled.is_dir():
        pytest.skip(f"{library} is not a wheel's self-contained library")
    e = np.ones((4, 3), np.float32)
    c = np.arange(15, dtype=np.float32).reshape(5, 3) / 10
    loss = cs.linear_cross_entropy(e, c, np.array([0, 1, 2, 3]))
    assert np.isfinite(loss)
    paths = mapped()
    assert not [p for p in paths if "libswift" in Path(p).name or "Foundation" in Path(p).name], paths
    names = {p.name for p in bundled.iterdir()}
    foreign = [p for p in paths if Path(p).name in names and Path(p).parent != bundled]
    assert not foreign, f"the machine's copies were loaded instead of the bundled ones: {foreign}"
    assert _lib.lib().path == str(library)

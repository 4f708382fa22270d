// swift-tools-version:6.0
// Cut Cross-Entropy on the CPU: a pure-Swift engine (SIMD kernels, threads, NUMA-aware
// placement) for the cross-entropy of a linear classifier over a large vocabulary, without
// materializing the N x V logits. See README.md and Docs/.
import PackageDescription

// MARK: - Target CPU
// Swift's SIMD types lower to scalar code unless the target CPU is named: the kernels run
// about 100x slower without it. The default is the build machine's CPU ("native").
// Override with the environment variable CCE_TARGET_CPU, e.g. CCE_TARGET_CPU=znver4 or
// CCE_TARGET_CPU=haswell for a portable AVX2 + FMA binary (swiftc takes CPU names, not
// x86-64-v3); CCE_TARGET_CPU=none names none.
let targetCPU = Context.environment["CCE_TARGET_CPU"] ?? "native"
let fastFlags: [SwiftSetting] = targetCPU == "none" ? [] : [.unsafeFlags(["-target-cpu", targetCPU])]

// MARK: - A self-contained libcce_cpu.so
// CCE_STATIC_SWIFT=1 links the Swift runtime and Dispatch into libcce_cpu.so (its targets import
// no Foundation), so that it loads where no Swift toolchain is installed (the wheel of
// scripts/build_wheel.sh). Only for
// `swift build --product cce_cpu` in a scratch path of its own: every other product and the
// tests link the toolchain's shared runtime.
let staticSwift = Context.environment["CCE_STATIC_SWIFT"] == "1"
let cabiLinker: [LinkerSetting] = staticSwift ? [.unsafeFlags(["-static-stdlib"])] : []

let package = Package(
    name: "CutCrossEntropy",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "CutCrossEntropy", targets: ["CutCrossEntropy"]),
        .executable(name: "cce", targets: ["cce"]),
        // The C ABI (Sources/CCECPU/include/cce_cpu.h): libcce_cpu.so, for C callers and the
        // Python package in python/ (`swift build -c release --product cce_cpu`).
        .library(name: "cce_cpu", type: .dynamic, targets: ["CCECABI", "CCECPU"]),
        // CCE across processes over MPI (Docs/SCALING.md): vocabulary- and token-parallel.
        .library(name: "CutCrossEntropyMPI", targets: ["CutCrossEntropyMPI"]),
        // The MPI shim (Sources/CCEMPIABI/cce_mpi.h), the only binary that links libmpi:
        // CutCrossEntropyMPI opens it with dlopen when a run has more than one rank.
        .library(name: "cce_mpi", type: .dynamic, targets: ["CCEMPIShim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // MARK: - System libraries (Debian: libopenblas-dev, libhwloc-dev, libnuma-dev)
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CHwloc", pkgConfig: "hwloc", providers: [.apt(["libhwloc-dev"])]),
        .systemLibrary(name: "CNUMA", pkgConfig: "numa", providers: [.apt(["libnuma-dev"])]),
        // The CUDA library's C ABI (cuda/include/cce_cuda.h through its module map): types and
        // declarations only, nothing linked and no CUDA toolkit needed; CUDALibrary opens
        // libcce_cuda.so with dlopen at run time.
        .systemLibrary(name: "CCECUDAABI", path: "cuda/include"),
        // Open MPI (Debian: libopenmpi-dev, openmpi-bin), for the shim below only.
        .systemLibrary(name: "CMPI", pkgConfig: "ompi", providers: [.apt(["libopenmpi-dev"])]),
        // The shim's C ABI (cce_mpi.h through a module map): types and declarations, nothing linked.
        .systemLibrary(name: "CCEMPIABI"),
        // libcce_mpi.so: cce_mpi.h over mpi.h, linked to libmpi; loaded at run time.
        .target(name: "CCEMPIShim", dependencies: ["CMPI"]),

        // MARK: - Internal modules
        // AVX-512 tile products (the bf16 dot product `vdpbf16ps`, and 512-bit FMAs), the one
        // C target: Swift cannot spell the instruction nor enable a CPU feature per function
        // (Sources/CCEAVX512/cce_avx512.c says why). Its functions carry their own target
        // attributes, so it builds for any x86-64 CPU and runs only where cpuid says it can.
        .target(name: "CCEAVX512"),
        // Arithmetic on one tile: conversions, the tile product, the LSE merge, the
        // gradient updates. Swift SIMD, and the AVX-512 kernels above chosen at run time.
        .target(name: "CCEKernels", dependencies: ["CCEAVX512"], swiftSettings: fastFlags),
        // Threads, topology (hwloc), placement (libnuma), memory measurement.
        .target(name: "CCERuntime", dependencies: ["CHwloc", "CNUMA"], swiftSettings: fastFlags),

        // MARK: - Public library
        .target(name: "CutCrossEntropy",
                dependencies: ["CCEKernels", "CCERuntime", "COpenBLAS", "CCECUDAABI"],
                swiftSettings: fastFlags),

        // MARK: - The C ABI: the header and last-error storage (C), the entry points (Swift, @_cdecl)
        .target(name: "CCECPU"),
        .target(name: "CCECABI", dependencies: ["CCECPU", "CutCrossEntropy", "CCEKernels", "CCERuntime"],
                swiftSettings: fastFlags, linkerSettings: cabiLinker),

        // MARK: - Across processes: the communicator (MPI loaded at run time), vocabulary- and token-parallel CCE
        .target(name: "CutCrossEntropyMPI", dependencies: ["CutCrossEntropy", "CCEMPIABI", "CCERuntime"],
                swiftSettings: fastFlags),

        // MARK: - The numerical reference: .npy input and output, comparison, the self-check's drawn cases
        .target(name: "CCEReference", dependencies: ["CutCrossEntropy", "CCEData"]),

        // MARK: - Seeded data: the random generator and the LM-like problems (Docs/LMLIKE.md)
        // that training, benchmarks and tests draw from. Same seed, same data.
        .target(name: "CCEData", dependencies: ["CutCrossEntropy", "COpenBLAS"], swiftSettings: fastFlags),

        // MARK: - Benchmarks and the command-line tool
        .target(name: "CCEBenchmarks",
                dependencies: ["CutCrossEntropy", "CCEData", "CCEKernels", "CCERuntime", "COpenBLAS"],
                path: "Benchmarks/CCEBenchmarks", swiftSettings: fastFlags),
        // A small neural language model trained through the library's loss (`cce train`),
        // its corpora and tokenizer.
        .target(name: "CCETraining",
                dependencies: ["CutCrossEntropy", "CCEData", "CCERuntime", "COpenBLAS"],
                swiftSettings: fastFlags),
        // The engine's teaching surface (`cce explain`): the tile walkthrough of a tiny
        // example and the map of skipped backward tiles, as data (and an SVG picture).
        .target(name: "CCEExplain",
                dependencies: ["CutCrossEntropy", "CCEData", "COpenBLAS"],
                swiftSettings: fastFlags),
        .executableTarget(name: "cce",
                          dependencies: ["CutCrossEntropy", "CCEBenchmarks", "CCEData", "CCEReference", "CCERuntime",
                                         "CCETraining", "CCEExplain", "CutCrossEntropyMPI",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: fastFlags),

        // MARK: - Tests
        // The program MPITests runs under mpirun (parallel against one-process results).
        .executableTarget(name: "CCEMPICheck", dependencies: ["CutCrossEntropy", "CutCrossEntropyMPI", "CCEData"],
                          path: "Tests/MPICheck", swiftSettings: fastFlags),
        .testTarget(name: "CutCrossEntropyTests",
                    dependencies: ["CutCrossEntropy", "CCEData", "CCEKernels", "CCERuntime", "CCEReference",
                                   "CCETraining", "CCEExplain", "CCECABI", "CCECPU", "CCEBenchmarks"],
                    swiftSettings: fastFlags),
    ]
)

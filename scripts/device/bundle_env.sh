# Sourced by the device scripts that run the static `cce` on the GPU machine's host (carry
# .gpu/bundle.tar.xz from cuda/make_swift_bundle.sh): unpacks the bundle into $B, puts its
# libraries on the loader path, makes $OUT, prints the CPU and starts the clock T0.
OUT=${OUT:-out}; mkdir -p "$OUT"
B=$(mktemp -d); tar -xJf .gpu/bundle.tar.xz -C "$B"
export LD_LIBRARY_PATH="$B/lib"
grep -E "Model name|^CPU\(s\)" <(lscpu)
T0=$(date +%s)

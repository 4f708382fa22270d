#!/usr/bin/env bash
# Builds the DocC archive of the CutCrossEntropy module without a package dependency
# (no swift-docc-plugin):
#
#   1. swift build -c release --target CutCrossEntropy     (incremental; the kernels need release)
#   2. swift symbolgraph-extract on the built module         -> .build/docs/symbol-graphs/
#      (reads the .swiftmodule the build just wrote, so nothing is compiled twice)
#   3. docc convert with the catalog and the symbol graphs  -> .build/docs/CutCrossEntropy.doccarchive
#      with --warnings-as-errors, so an unresolved symbol link fails the script.
#
# Usage: scripts/docs.sh            (from anywhere). The examples of Docs/API.md and
#        GettingStarted.md marked "<!-- tested: ... -->" are checked against the tests that run
#        them by DocExamplesTests (testDocumentedExamplesAreTheTestedOnes), in the test suite:
#        swift test -c release --disable-swift-testing --filter DocExamplesTests
# View:  docc preview Sources/CutCrossEntropy/CutCrossEntropy.docc \
#            --additional-symbol-graph-dir .build/docs/symbol-graphs
# Env:   DOCC=/path/to/docc (default: docc on PATH, else next to swift);
#        CCE_DOCS_WARNINGS=1 reports warnings without failing.
set -euo pipefail
cd "$(dirname "$0")/.."

catalog=Sources/CutCrossEntropy/CutCrossEntropy.docc
out=.build/docs
graphs=$out/symbol-graphs
archive=$out/CutCrossEntropy.doccarchive

docc=${DOCC:-$(command -v docc || true)}
if [ -z "$docc" ]; then
    swift_bin=$(dirname "$(readlink -f "$(command -v swift)")")
    docc=$swift_bin/docc
fi
[ -x "$docc" ] || { echo "docs: docc not found (set DOCC=/path/to/docc)" >&2; exit 1; }

echo "docs: building CutCrossEntropy (release)" >&2
swift build -c release --target CutCrossEntropy >&2
modules=$(swift build -c release --show-bin-path)/Modules
[ -d "$modules" ] || modules=$(swift build -c release --show-bin-path)

echo "docs: extracting the symbol graph" >&2
triple=$(swift -print-target-info | python3 -c 'import json, sys; print(json.load(sys.stdin)["target"]["triple"])')
rm -rf "$graphs" && mkdir -p "$graphs"
swift symbolgraph-extract -module-name CutCrossEntropy -minimum-access-level public \
    -target "$triple" \
    -I "$modules" -I Sources/COpenBLAS -I Sources/CHwloc -I Sources/CNUMA -I cuda/include \
    -Xcc -fmodule-map-file=.build/release/CCEAVX512.build/module.modulemap -Xcc -I -Xcc Sources/CCEAVX512/include \
    -output-dir "$graphs"

echo "docs: converting with docc" >&2
flags=(--warnings-as-errors)
[ "${CCE_DOCS_WARNINGS:-0}" = 1 ] && flags=()
rm -rf "$archive"
"$docc" convert "$catalog" \
    --additional-symbol-graph-dir "$graphs" \
    --fallback-display-name CutCrossEntropy \
    --fallback-bundle-identifier org.swift.cutcrossentropy \
    --output-path "$archive" \
    "${flags[@]}"
echo "docs: wrote $archive" >&2

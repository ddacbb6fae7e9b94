#!/usr/bin/env bash
# The virtkit CLI against podman with the Debian 12 + apache2 image from a local registry:
# pull + unpack into a cold store, `run -d -p` to the first HTTP 200 (podman + crun), and
# `run --rm IMAGE true` warm (podman + crun, podman + container-runner). The measuring is
# done by benches/bin/container_workflow_vs_podman.rs (its header says how); this builds
# and runs it. Root; the first run builds the image with debootstrap (about a minute).
#
#   benches/scripts/container-workflow-vs-podman.sh [ROUNDS] [RUNS]
#
# The last lines are for `cargo xtask bench` (machine-readable, one per figure):
#   RESULT name=pull-unpack-vs-podman value=MS unit=ms peer=podman peer_value=MS target_ratio=<=0.70 label="..."
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
(cd "$root" && cargo build --quiet --release -p virtkit-benches --bin container-workflow-vs-podman)
exec "${CARGO_TARGET_DIR:-$root/target}/release/container-workflow-vs-podman" "$@"

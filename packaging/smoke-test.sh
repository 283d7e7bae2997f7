#!/usr/bin/env bash
# Starts a built LoRA Studio offscreen and checks that it works (`make package-smoke`):
#   1. the window opens on the sample dataset and closes by itself (--smoke-test, exit 0);
#   2. a dataset folder given on the command line opens (what the launcher's %F does);
#   3. the bundled torch + diffusers + transformers build the tiny model (the training stack
#      is importable and its data files are there).
# Everything it writes goes to a temporary LORA_STUDIO_HOME, removed at the end.
#
# Usage: packaging/smoke-test.sh [path/to/lora-studio]   (default dist/lora-studio/lora-studio)
set -euo pipefail

app=${1:-dist/lora-studio/lora-studio}
if [ ! -x "$app" ]; then
    echo "smoke test: no built app at $app (run make package first)" >&2
    exit 1
fi
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export LORA_STUDIO_HOME="$home" LORA_STUDIO_CACHE="$home/cache"

step() {  # step NAME EXPECTED-OUTPUT COMMAND...
    local name=$1 expected=$2 start=$SECONDS
    shift 2
    if ! timeout 300 "$@" >"$home/out.log" 2>"$home/err.log"; then
        echo "smoke test: $name FAILED (exit $?)" >&2
        tail -n 30 "$home/err.log" "$home/out.log" >&2
        exit 1
    fi
    if ! grep -q -- "$expected" "$home/out.log"; then
        echo "smoke test: $name FAILED: no '$expected' in its output" >&2
        tail -n 30 "$home/err.log" "$home/out.log" >&2
        exit 1
    fi
    echo "smoke test: $name ok ($((SECONDS - start)) s): $(grep -m1 -- "$expected" "$home/out.log")"
}

step "window on the sample dataset" "window opened on" "$app" --smoke-test
mkdir -p "$home/my dataset"
cp "$home/data/sample_dataset/"papercut_0[1-3].* "$home/my dataset/"
step "window on a folder from the command line" "window opened on $home/my dataset (3 images)" \
    "$app" "$home/my dataset" --smoke-test
step "the training stack (tiny model)" "$home/tiny" "$app" models make-tiny "$home/tiny"
echo "smoke test: passed"

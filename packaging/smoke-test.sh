#!/usr/bin/env bash
# Starts a built LoRA Studio offscreen and checks that it works (`make package-smoke`):
#   1. the window opens on the sample dataset and closes by itself (--smoke-test, exit 0);
#   2. a dataset folder given on the command line opens (what the launcher's %F does);
#   3. two training steps on the tiny model (the bundled torch, diffusers, transformers, peft
#      and accelerate, and their data files) and `lora inspect` on the LoRA it wrote;
#   4. `APP -u -m lora_studio ...`, the way accelerate starts one worker per GPU.
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
step "two training steps on the tiny model" "$home/out/smoke.safetensors" \
    "$app" train "$home/my dataset" --base-model builtin:tiny-sd15 --preset fast \
    --max-steps 2 --resolution 64 --name smoke --output "$home/out"
step "the LoRA it wrote" "format: *kohya" "$app" lora inspect "$home/out/smoke.safetensors"
# how accelerate starts a worker per GPU: sys.executable -u -m lora_studio ...
step "python-style -m start" "kind: *builtin" "$app" -u -m lora_studio models info builtin:tiny-sd15
echo "smoke test: passed"

#!/usr/bin/env bash
# Build the project environment (.venv) from the committed lock file, with uv.
# pip alone is not enough on machines whose pip prefers a CPU-only torch wheel that torchvision's
# PyPI build cannot load (see README, Troubleshooting); uv resolves the same pins for CPU and GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ]; then
    echo "setup: installing uv with pip (python3 -m pip install --user uv)"
    python3 -m pip install --quiet --user "uv>=0.5,<1" || python3 -m pip install --quiet "uv>=0.5,<1"
fi
UV=$(command -v uv || echo "$HOME/.local/bin/uv")

echo "setup: uv sync --frozen (pinned by uv.lock; ~4.6 GB with the CUDA-enabled torch build)"
# --compile-bytecode writes every package's .pyc now: where PYTHONDONTWRITEBYTECODE is set
# (these machines), Python would otherwise compile torch's sources again in every process it
# starts (importing the training code: 17 s instead of 7 here; each torchrun rank pays it).
"$UV" sync --frozen --python 3.11 --compile-bytecode

java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1 || true)
if [ -z "${java_major}" ] || [ "${java_major}" -lt 17 ]; then
    echo "setup: WARNING: TorchServe needs Java 17 or newer (found: ${java_major:-none})." >&2
    echo "       Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless" >&2
    echo "       macOS: brew install openjdk@17    Training works without it; serving does not." >&2
else
    echo "setup: java ${java_major} found (TorchServe needs >= 17)"
fi
touch .venv/.ready
echo "setup: done"

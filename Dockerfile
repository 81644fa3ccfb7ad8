# nml for cloud GPUs. PyPI's torch wheels for Linux are CUDA builds (they bring their CUDA
# libraries; the host needs only the NVIDIA driver and the container toolkit): the image installs
# the versions pinned in tools/constraints.txt, as tools/setup.sh does (tools/check_docker.sh runs
# these install steps in a clean venv in CI, and lints this file with hadolint).
#
#   docker build -t nml .
#   mkdir -p data runs   # else Docker creates them as root and the image's user cannot write them
#   docker run --gpus all --ipc=host --rm -v "$PWD/data:/work/data" -v "$PWD/runs:/work/runs" nml \
#       fit --config pretrain_supervised.yaml
#
# --ipc=host (or --shm-size 8g): DataLoader workers pass batches through shared memory, which
# Docker limits to 64 MB by default.
FROM python:3.11-slim-bookworm

ARG NML_VERSION=0.1.0
LABEL org.opencontainers.image.title="nml" \
      org.opencontainers.image.description="Noisy Model Learning: label noise in pre-training, downstream ID/OOD, NMTune (PyTorch Lightning)" \
      org.opencontainers.image.version="${NML_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# the embedded benchmark's reference fonts (Debian packages pinned by name in the list)
COPY nml/benchmark/debian-font-packages.txt /tmp/debian-font-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
 && grep -v '^#' /tmp/debian-font-packages.txt | sed '/^$/d' | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/debian-font-packages.txt

WORKDIR /opt/nml
COPY pyproject.toml README.md ./
COPY tools/constraints.txt tools/constraints.txt
COPY nml nml
RUN pip install -c tools/constraints.txt ".[cloud,text]" && nml --help >/dev/null

# an unprivileged user; /work is where relative paths point (data/embedded, runs/): mount volumes there
RUN useradd --create-home --uid 1000 --user-group nml \
 && mkdir -p /work/data /work/runs \
 && chown -R 1000:1000 /work
USER 1000:1000
WORKDIR /work
ENV NML_DATA=/work/data/embedded
VOLUME ["/work/data", "/work/runs"]

# HOME and matplotlib's cache work for any --user "$(id -u):$(id -g)" too (a uid without a home)
ENV HOME=/work MPLCONFIGDIR=/tmp/matplotlib

# checks that /work/data and /work/runs are writable (naming the fix), then runs nml
ENTRYPOINT ["python", "-m", "nml.container"]
CMD ["--help"]

# nml on a CUDA machine: docker build -t nml . && docker run --gpus all --rm nml nml --help
# The image installs the pinned Debian font set (the embedded benchmark's reference fonts) and runs
# as the unprivileged user "nml".
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

COPY nml/benchmark/debian-font-packages.txt /tmp/debian-font-packages.txt
RUN apt-get update \
 && grep -v '^#' /tmp/debian-font-packages.txt | xargs apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/debian-font-packages.txt

RUN useradd --create-home --uid 1000 nml
WORKDIR /opt/nml
COPY pyproject.toml README.md ./
COPY tools/constraints.txt tools/constraints.txt
COPY nml nml
RUN pip install -c tools/constraints.txt . && nml --help >/dev/null

USER nml
WORKDIR /home/nml
CMD ["nml", "--help"]

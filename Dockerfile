# connecto image: training and prediction run in it (`make image`; launcher "docker").
# BASE_IMAGE: any image with Python 3.11 (and CUDA + PyTorch for GPUs). The default is the
# public CUDA PyTorch runtime; `make image BASE_IMAGE=...` picks another.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# A compiler for the dependencies that build wheels (waterz, mwatershed), git for the commit
# connecto records with every run.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/connecto
COPY pyproject.toml README.md ./
COPY connecto ./connecto
COPY cli ./cli
COPY mongo ./mongo
COPY experiments ./experiments
# torch comes with the base image; pip keeps it when it satisfies the requirement.
RUN python -m pip install --no-cache-dir ".[local-server]" \
    && connecto --version

# Jobs run as the submitting user (docker run --user UID:GID): give them a writable HOME.
ENV HOME=/tmp PYTHONUNBUFFERED=1
WORKDIR /work
ENTRYPOINT ["connecto"]
CMD ["--help"]

# One image for every Quartermaster service; the command picks the service:
#   python -m services.metering        (metering worker)
#   python -m services.metering.api    (Cost API)
#   python -m services.policy          (policy)
#   python -m devtools.migrate         (migrations, the chart's hook Job)
#   python -m quartermaster.kafka ensure-topics --partitions N  (topics Job)
# It runs as uid 10001 on a read-only root filesystem: only /tmp and the metering
# worker's data directory need to be writable (tests/deploy/test_readonly.py proves it
# against the real services).

# --- build: wheels for the project and its dependencies (compilers stay here)
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.9 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY quartermaster ./quartermaster
COPY services ./services
COPY devtools ./devtools
RUN python -m venv /opt/qm \
    && /opt/qm/bin/pip install --no-compile . \
    && /opt/qm/bin/python -m compileall -q /opt/qm/lib

# --- runtime: the venv only, no compilers, no pip cache, non-root
FROM python:3.11.14-slim-bookworm
ENV PATH=/opt/qm/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 qm \
    && useradd --system --uid 10001 --gid qm --home-dir /nonexistent --no-create-home qm
COPY --from=build /opt/qm /opt/qm
WORKDIR /opt/qm
USER 10001:10001
ENTRYPOINT ["python"]
CMD ["-m", "services.policy"]

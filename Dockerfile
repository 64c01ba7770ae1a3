# apf-emu as a service image: `apf` is the entry point, the command is an apf subcommand.
#   docker build -t apf-emu .
#   docker run --rm apf-emu run --guest-mem 32MiB --host-mem 8MiB --mode async --swap-latency 2ms
# docker-compose.yml runs `apf host` and `apf guest` as two containers from this image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /src
COPY pyproject.toml README.md ./
COPY apf ./apf
COPY host ./host
COPY guest ./guest
COPY shared ./shared
COPY protocol ./protocol
# /run/apf: the run dir (host.json, the ipc socket, the lock, the swap file), which must be private
# to its user (a fresh named volume mounted there takes its 0700); /out: reports.
RUN pip install . \
    && install -d -m 0700 /run/apf /out
WORKDIR /out

ENTRYPOINT ["apf"]
CMD ["--help"]

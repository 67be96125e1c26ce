# koodrive-exporter container image: a wheel built in one stage, installed into a venv that
# is copied alone into a slim runtime, run as a fixed non-root user.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
# What --version and koodrive_exporter_build_info report, recorded in the wheel
# (exporter/core/build.py); a release passes them, a plain build says unknown.
ARG REVISION=unknown
ARG BRANCH=unknown
ARG BUILD_USER=unknown
ARG BUILD_DATE=unknown
RUN python -c 'import json, os; json.dump({"revision": os.environ["REVISION"], \
      "branch": os.environ["BRANCH"], "user": os.environ["BUILD_USER"], \
      "date": os.environ["BUILD_DATE"]}, open("exporter/core/build_info.json", "w"))'
# Build the project's wheel, then install it with its dependencies into a venv (pip
# compiles the bytecode); pip itself is not needed at run time.
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --no-deps \
      --wheel-dir /wheels . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
# Must equal exporter.__version__ (tests/test_repo.py checks it).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="koodrive-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Huawei Cloud KooDrive space usage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/koodrive-exporter/koodrive-exporter"
COPY --from=build /opt/venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed UID/GID outside any distribution's range; nothing is written at run time, so a
# read-only root filesystem works.
USER 65532:65532
EXPOSE 9877
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-m", "exporter.healthcheck"]
ENTRYPOINT ["koodrive-exporter"]
CMD ["--config.file=/etc/koodrive-exporter/config.yaml"]

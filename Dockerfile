# syntax=docker/dockerfile:1
# The relay image: `bridged relay` as uid 10001 on a read-only root filesystem (the Deployment
# in bridged/kube/manifests.py passes the arguments and mounts the writable paths).
# Built for linux/amd64 and linux/arm64 by .github/workflows/release.yml on version tags, or by
# `bridged relay-image build` from a checkout.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the wheel, then a virtualenv holding it and its dependencies only ---------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridged ./bridged
# binary wheels exist for every compiled dependency on both architectures (uvloop, httptools,
# aiohttp, cryptography, PyYAML, rpds-py): the slim base has no compiler and needs none.
# The venv has no pip of its own (installed into from outside): nothing in the final image
# can install packages. pip compiles the .pyc files here, as the root filesystem is read-only.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/bridged \
 && pip --python /opt/bridged/bin/python install --prefer-binary /wheels/bridged-*.whl

# --- the image: the base interpreter, the venv, a user ---------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/bridged/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin bridged
COPY --from=build /opt/bridged /opt/bridged
LABEL org.opencontainers.image.title="bridged relay" \
      org.opencontainers.image.licenses="Apache-2.0"
# numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd
USER 10001
ENTRYPOINT ["bridged", "relay"]
# the defaults for `docker run`; the Deployment replaces them with its args
CMD ["--ssh-listen", "127.0.0.1:2222", "--http-listen", "0.0.0.0:8080", \
     "--host-key", "/var/run/bridged/ssh_host_ed25519_key", \
     "--authorized-keys", "/etc/bridged/authorized-keys"]

# The relay image: `bridged relay` as a non-root user on a read-only root filesystem.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridged ./bridged
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin bridged
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
# host key and token live on writable volumes (an emptyDir and a Secret), never in the image
ENTRYPOINT ["bridged", "relay"]
CMD ["--ssh-listen", "127.0.0.1:2222", "--http-listen", "0.0.0.0:8080", \
     "--host-key", "/var/run/bridged/ssh_host_ed25519_key", \
     "--authorized-keys", "/etc/bridged/authorized_keys"]

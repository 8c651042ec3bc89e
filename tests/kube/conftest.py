"""Fixtures for the stand-in API server's own tests: a server in TLS and in plain HTTP mode,
with a kubelet hook that runs an echo server on loopback for every containerPort."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .apiserver import KubeApiServer, PodHandle, PodSandbox


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class EchoKubelet:
    """A kubelet hook: each pod gets one echo server per containerPort. ``ready`` decides the
    readiness the pods report; ``fail_with`` makes the hook raise (ImagePullBackOff...)."""

    def __init__(self) -> None:
        self.running: dict[str, list[asyncio.Server]] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.ready = True
        self.fail_with: Exception | None = None

    async def __call__(self, sandbox: PodSandbox) -> PodHandle:
        if self.fail_with is not None:
            raise self.fail_with
        servers = []
        ports: dict[int, int] = {}
        for port in sandbox.container_ports:
            server = await asyncio.start_server(_echo, "127.0.0.1", 0)
            servers.append(server)
            ports[port] = server.sockets[0].getsockname()[1]
        self.running[sandbox.name] = servers
        self.started.append(sandbox.name)
        sandbox.set_ready(self.ready)

        async def stop() -> None:
            self.stopped.append(sandbox.name)
            for server in servers:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)

        return PodHandle(ports=ports, stop=stop, logs=lambda: f"hello from {sandbox.name}\n")


@pytest.fixture
def echo_kubelet() -> EchoKubelet:
    return EchoKubelet()


@pytest.fixture
async def api(echo_kubelet: EchoKubelet) -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(kubelet=echo_kubelet, bookmark_interval=0.2,
                             namespaces=["team-a", "team-b"]) as server:
        yield server


@pytest.fixture
async def http_api(echo_kubelet: EchoKubelet) -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(tls=False, kubelet=echo_kubelet, bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(api: KubeApiServer, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")

"""A relay image the cluster cannot pull, on the stand-in cluster: ``bridged connect`` names
the image and both ways out in one line, leaves no bridge behind, and the way out it names
(``--relay-image`` with an image the cluster can pull) then works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridged import __version__
from bridged.control.client import ControlClient
from bridged.kube import manifests as m
from bridged.localrun import DaemonProcess

from ..helpers import Daemon, assert_clean_log
from .apiserver import Context, KubeApiServer
from .relay_kubelet import RelayKubelet

NS = "team-a"
#: the image the developer pushed to a registry of their own: the only one this node can pull
OWN_IMAGE = f"registry.team.example/tools/relay:{__version__}"


@pytest.fixture
async def node(tmp_path: Path) -> RelayKubelet:
    kubelet = RelayKubelet(tmp_path / "node")
    kubelet.pullable = {OWN_IMAGE}
    return kubelet


@pytest.fixture
async def cluster(tmp_path: Path, node: RelayKubelet,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(kubelet=node, namespaces=[NS], bookmark_interval=0.2) as api:
        node.attach(api)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", [
            Context("admin", api.admin, NS, auth="cert"),
        ])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield api


@pytest.fixture
async def laptop(tmp_path: Path, cluster: KubeApiServer) -> AsyncIterator[Daemon]:
    process = await DaemonProcess(tmp_path / "laptop").start()
    daemon = Daemon(process, ControlClient(process.socket))
    yield daemon
    await process.stop()
    assert_clean_log(process.log_path)


async def test_an_unpullable_default_image_names_it_and_both_ways_out(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    failed = await laptop.acli("connect")
    assert failed.returncode == 1
    errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("bridged: ")]
    assert len(errors) == 1, failed.stderr  # progress lines aside: one line, no traceback
    error = errors[0]
    assert "Traceback" not in failed.stderr
    assert f"the relay image {m.DEFAULT_IMAGE} cannot be pulled" in error
    assert "ImagePullBackOff" in error
    assert (f"`bridged relay-image build --tag REGISTRY/relay:{__version__} --push`"
            in error)
    assert f"--relay-image REGISTRY/relay:{__version__}" in error
    assert "access to ghcr.io" in error  # the default image's registry
    # nothing half-made on the laptop: no bridge was recorded
    assert (await laptop.status())["bridges"] == []

    # the first way out: the developer's own image, which this cluster can pull
    joined = await laptop.acli("connect", "--relay-image", OWN_IMAGE)
    assert joined.returncode == 0, joined.stderr
    bridges = (await laptop.status())["bridges"]
    assert [b["state"] for b in bridges] == ["connected"]
    dep = cluster.get("deployments", NS, m.RELAY) or {}
    assert [c["image"] for c in dep["spec"]["template"]["spec"]["containers"]] == [OWN_IMAGE]


async def test_an_unpullable_own_image_points_at_its_own_registry(
    cluster: KubeApiServer, laptop: Daemon
) -> None:
    failed = await laptop.acli("connect", "--relay-image", "registry.invalid:5000/relay:nope")
    assert failed.returncode == 1
    errors = [ln for ln in failed.stderr.splitlines() if ln.startswith("bridged: ")]
    assert len(errors) == 1, failed.stderr
    assert "the relay image registry.invalid:5000/relay:nope cannot be pulled" in errors[0]
    assert "access to registry.invalid:5000" in errors[0]

"""The relay image: its default reference tied to the package version, the Dockerfile agreeing
with the Deployment that runs it, and ``bridged relay-image build`` driving docker, podman or
buildah.

No container engine runs on the machines these tests were written on, so the tool is played by
a stand-in: a tiny shell script named ``docker`` (``podman``, ``buildah``) on a PATH of the
test's own, which records its arguments and prints a progress line — a stand-in for the
external CLI, not for the network or bridged's own code. The real build is the last test,
skipped with the reason when no usable tool and engine are present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

import bridged
from bridged import __version__
from bridged.cli.image import TOOLS, source_tree
from bridged.errors import BridgedError
from bridged.kube import manifests as m

CHECKOUT = Path(bridged.__file__).resolve().parent.parent
SEP = "\x1f"
FAKE_TOOL = r"""#!/bin/sh
printf '%s\037' "${0##*/}" "$@" >> "$ARGV_LOG"
printf '\n' >> "$ARGV_LOG"
echo "STEP 1/2: FROM python (fake ${0##*/})"
exit "${FAKE_EXIT:-0}"
"""


def _tools(tmp_path: Path, *names: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        tool = bin_dir / name
        tool.write_text(FAKE_TOOL)
        tool.chmod(0o755)
    return bin_dir


def _cli(tmp_path: Path, bin_dir: Path, *args: str,
         fail: bool = False) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    log = tmp_path / "argv.log"
    env = {**os.environ, "PATH": str(bin_dir), "ARGV_LOG": str(log),
           "FAKE_EXIT": "3" if fail else "0"}
    done = subprocess.run([sys.executable, "-m", "bridged", "relay-image", "build", *args],
                          env=env, capture_output=True, text=True, timeout=60)
    calls = [line.rstrip(SEP).split(SEP) for line in log.read_text().splitlines()] \
        if log.exists() else []
    return done, calls


def _errors(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("bridged: ")]


# --- the reference and the Dockerfile ----------------------------------------------------------


def test_the_default_image_is_the_published_one_of_this_version() -> None:
    project = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__  # the release workflow checks its tag against both
    assert m.DEFAULT_IMAGE == f"ghcr.io/bridged-dev/relay:{__version__}"
    container = m.deployment("team-a")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == m.DEFAULT_IMAGE
    assert m.deployment("team-a", "r.example/relay:1")["spec"]["template"]["spec"][
        "containers"][0]["image"] == "r.example/relay:1"  # --relay-image still wins


def test_the_dockerfile_runs_what_the_deployment_expects() -> None:
    text = (CHECKOUT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]  # the image users get, not the builder
    pod = m.deployment("team-a")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # the Deployment passes only args: the image's entrypoint must be the relay
    assert "command" not in container
    assert 'ENTRYPOINT ["bridged", "relay"]' in final
    assert container["args"][0].startswith("--")
    # runAsNonRoot needs a numeric USER; it is the uid the pod runs as
    assert f"\nUSER {pod['securityContext']['runAsUser']}" in final
    assert "--uid 10001" in final
    # no compiler or build step in the final stage: it only copies what the builder made
    assert "pip wheel" not in final and "gcc" not in final and "build-essential" not in final
    assert "COPY --from=build" in final


def test_the_build_context_leaves_out_what_the_image_does_not_need() -> None:
    ignored = {line.strip().rstrip("/") for line in
               (CHECKOUT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"tests", "bench", ".venv", ".git"} <= ignored


def test_an_installed_package_without_its_checkout_is_one_clear_error(tmp_path: Path) -> None:
    site = tmp_path / "site-packages" / "bridged"
    site.mkdir(parents=True)
    with pytest.raises(BridgedError) as caught:
        source_tree(site)
    assert "run bridged relay-image build from a checkout" in str(caught.value)
    assert source_tree(CHECKOUT / "bridged") == CHECKOUT


# --- bridged relay-image build, against stand-in tools -----------------------------------------


def test_with_no_tool_on_path_the_error_names_the_three(tmp_path: Path) -> None:
    done, _calls = _cli(tmp_path, _tools(tmp_path))
    assert done.returncode == 1
    errors = _errors(done)
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(name in errors[0] for name in TOOLS)


def test_docker_builds_the_checkout_with_the_default_tag(tmp_path: Path) -> None:
    done, calls = _cli(tmp_path, _tools(tmp_path, "docker", "podman", "buildah"))
    assert done.returncode == 0, done.stderr
    assert calls == [["docker", "build", "-t", m.DEFAULT_IMAGE,
                      "-f", str(CHECKOUT / "Dockerfile"), str(CHECKOUT)]]
    assert "STEP 1/2: FROM python (fake docker)" in done.stderr  # the tool's progress, streamed
    assert done.stdout.strip() == f"built {m.DEFAULT_IMAGE} with docker (--push to push it)"


def test_push_pushes_the_tag_after_the_build(tmp_path: Path) -> None:
    ref = f"registry.example.com/team/relay:{__version__}"
    done, calls = _cli(tmp_path, _tools(tmp_path, "docker"), "--tag", ref, "--push", "--json")
    assert done.returncode == 0, done.stderr
    assert calls == [["docker", "build", "-t", ref, "-f", str(CHECKOUT / "Dockerfile"),
                      str(CHECKOUT)],
                     ["docker", "push", ref]]
    # --json: stdout is the one document, the tool's chatter went to stderr
    assert json.loads(done.stdout) == {"image": ref, "tool": "docker", "pushed": True,
                                       "dockerfile": str(CHECKOUT / "Dockerfile")}


@pytest.mark.parametrize(("present", "build", "used"), [
    (("podman", "buildah"), "build", "podman"),
    (("buildah",), "bud", "buildah"),
])
def test_podman_then_buildah_when_docker_is_absent(
    tmp_path: Path, present: tuple[str, ...], build: str, used: str
) -> None:
    done, calls = _cli(tmp_path, _tools(tmp_path, *present), "--tag", "r.example/relay:x",
                       "--push")
    assert done.returncode == 0, done.stderr
    assert calls == [[used, build, "-t", "r.example/relay:x", "-f",
                      str(CHECKOUT / "Dockerfile"), str(CHECKOUT)],
                     [used, "push", "r.example/relay:x"]]


def test_a_failed_build_is_one_line_and_nothing_is_pushed(tmp_path: Path) -> None:
    done, calls = _cli(tmp_path, _tools(tmp_path, "podman"), "--push", fail=True)
    assert done.returncode == 1
    errors = _errors(done)
    assert errors == ["bridged: podman build failed with exit code 3 (its output is above)"]
    assert [call[1] for call in calls] == ["build"]  # no push of a half-built image


def test_a_tag_that_is_not_a_reference_is_refused_before_any_tool_runs(tmp_path: Path) -> None:
    done, calls = _cli(tmp_path, _tools(tmp_path, "docker"), "--tag", "--rm")
    assert done.returncode == 2
    assert len(_errors(done)) == 1
    assert calls == []


# --- the real build ----------------------------------------------------------------------------


def _usable_tool() -> tuple[str | None, str]:
    """A tool whose engine answers, or the reason there is none."""
    seen = []
    for name in TOOLS:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            info = subprocess.run([path, "info"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            seen.append(f"{name}: {exc}")
            continue
        if info.returncode == 0:
            return path, ""
        seen.append(f"{name} info failed: {info.stderr.decode(errors='replace').strip()[:120]}")
    return None, "; ".join(seen) or "none of docker, podman, buildah is on PATH"


def test_the_relay_image_builds_and_runs_as_10001(tmp_path: Path) -> None:
    tool, why = _usable_tool()
    if tool is None:
        pytest.skip(f"no usable container tool: {why}")
    ref = f"localhost/bridged-relay-test:{uuid.uuid4().hex[:12]}"
    done = subprocess.run([sys.executable, "-m", "bridged", "relay-image", "build",
                           "--tag", ref], capture_output=True, text=True, timeout=1800)
    try:
        assert done.returncode == 0, done.stderr[-4000:]
        name = Path(tool).name
        if name == "buildah":
            user = subprocess.run([tool, "inspect", "--format", "{{.OCIv1.Config.User}}", ref],
                                  capture_output=True, text=True, timeout=60).stdout.strip()
            assert user.split(":")[0] == "10001"
            return
        user = subprocess.run([tool, "image", "inspect", "--format", "{{.Config.User}}", ref],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        assert user.split(":")[0] == "10001"
        # the entrypoint answers on a read-only root, as the Deployment runs it
        help_text = subprocess.run([tool, "run", "--rm", "--read-only", "--network", "none",
                                    ref, "--help"], capture_output=True, text=True, timeout=120)
        assert help_text.returncode == 0, help_text.stderr
        assert "--ssh-listen" in help_text.stdout
    finally:
        subprocess.run([tool, "rmi", ref], capture_output=True, timeout=120)


# --- the release workflow's guard --------------------------------------------------------------


@pytest.mark.parametrize(("tag", "pushed"), [
    (f"v{__version__}", [m.DEFAULT_IMAGE, f"{m.IMAGE_REPOSITORY}:latest"]),
    ("v999.0.0", None),  # not the package's version: the workflow stops before building
])
def test_the_release_workflow_pushes_only_the_package_version(
    tmp_path: Path, tag: str, pushed: list[str] | None
) -> None:
    import yaml

    workflow = yaml.safe_load((CHECKOUT / ".github/workflows/release.yml").read_text())
    steps = workflow["jobs"]["relay-image"]["steps"]
    guard = next(step for step in steps if step.get("id") == "version")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)  # setup-python's `python`
    outputs = tmp_path / "github_output"
    done = subprocess.run(["bash", "-e", "-c", guard["run"]], cwd=CHECKOUT,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "GITHUB_REF_NAME": tag,
                               "GITHUB_OUTPUT": str(outputs)},
                          capture_output=True, text=True, timeout=60)
    if pushed is None:
        assert done.returncode != 0
        assert f"::error::tag {tag} is not the package version" in done.stdout
        assert not outputs.exists() or "tags=" not in outputs.read_text()
        return
    assert done.returncode == 0, done.stdout + done.stderr
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines())
    assert values["tags"].split(",") == pushed
    assert values["image"] == m.DEFAULT_IMAGE

"""``bridged relay-image build``: the relay's image made from this checkout's Dockerfile with
the container tool the machine has, tagged, and pushed on request — for a cluster that cannot
pull the published image (no access to ghcr.io, or a change to the relay being tried).

The tool does the work and shows its own progress: its output is streamed to stderr, so that
stdout stays free for the one line (or JSON document) saying what was built.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ..errors import BridgedError, ConfigError
from ..kube.manifests import DEFAULT_IMAGE
from .output import JsonOpt, emit, handles_errors

#: looked for on PATH in this order: docker is the most common, podman answers to the same
#: arguments, buildah (no engine, no daemon) is the last resort
TOOLS = ("docker", "podman", "buildah")
#: a reference as the tools take it; a leading '-' would read as an option
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


@dataclass(frozen=True)
class ImageBuild:
    """One build: which tool, what it builds, where it puts it."""

    tool: str  # the executable's path
    tag: str
    dockerfile: Path
    context: Path
    push: bool

    @property
    def tool_name(self) -> str:
        return Path(self.tool).name

    def commands(self) -> list[list[str]]:
        """The tool's command lines, in order (buildah spells build ``bud``)."""
        build = "bud" if self.tool_name == "buildah" else "build"
        steps = [[self.tool, build, "-t", self.tag, "-f", str(self.dockerfile), str(self.context)]]
        if self.push:
            steps.append([self.tool, "push", self.tag])
        return steps


def find_tool(search_path: str | None = None) -> str:
    """The first of docker, podman and buildah on PATH (or ``search_path``)."""
    for name in TOOLS:
        found = shutil.which(name, path=search_path)
        if found:
            return found
    raise BridgedError("no container tool found: install docker, podman or buildah "
                       "(none of them is on PATH)")


def source_tree(package_dir: Path | None = None) -> Path:
    """The checkout the package runs from: the folder holding the package, the Dockerfile and
    pyproject.toml. A package installed from a wheel has none (the Dockerfile builds from
    source), which is a one-line error."""
    if package_dir is None:
        import bridged

        package_dir = Path(bridged.__file__).resolve().parent
    root = package_dir.parent
    if (root / "Dockerfile").is_file() and (root / "pyproject.toml").is_file():
        return root
    raise BridgedError(f"no Dockerfile beside the installed package ({package_dir})",
                       hint="run bridged relay-image build from a checkout of the bridged "
                            "repository (pip install -e .)")


def checked_tag(tag: str) -> str:
    if not _REFERENCE.fullmatch(tag):
        raise ConfigError(f"--tag {tag!r} is not an image reference",
                          hint="like registry.example.com/team/relay:1.0")
    return tag


def run(build: ImageBuild, progress_out: int | None = None) -> None:
    """Each step with the tool's output on stderr; a failed step stops the build."""
    out = sys.stderr.fileno() if progress_out is None else progress_out
    for step in build.commands():
        sys.stderr.write(f"… {shlex.join(step)}\n")
        sys.stderr.flush()
        try:
            done = subprocess.run(step, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  check=False)
        except OSError as exc:
            raise BridgedError(f"cannot run {build.tool}: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            raise BridgedError(f"{build.tool_name} {step[1]} failed with exit code "
                               f"{done.returncode}", hint="its output is above")


def register(app: typer.Typer) -> None:
    image = typer.Typer(help="The relay's container image.", no_args_is_help=True)
    app.add_typer(image, name="relay-image")

    @image.command("build")
    @handles_errors
    def build(
        tag: Annotated[str, typer.Option(
            help="Image reference to build (and push); the default is what "
                 "bridged connect deploys.")] = DEFAULT_IMAGE,
        push: Annotated[bool, typer.Option(help="Push the image once built.")] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Build the relay image from this checkout with docker, podman or buildah; with
        --push, push it where your cluster pulls from, then connect with --relay-image."""
        root = source_tree()
        plan = ImageBuild(tool=find_tool(), tag=checked_tag(tag),
                          dockerfile=root / "Dockerfile", context=root, push=push)
        run(plan)
        emit({"image": plan.tag, "tool": plan.tool_name, "pushed": plan.push,
              "dockerfile": str(plan.dockerfile)}, json_out, _say_built)


def _say_built(done: dict[str, object]) -> None:
    if done["pushed"]:
        typer.echo(f"built and pushed {done['image']} with {done['tool']}: "
                   f"bridged connect --relay-image {done['image']} deploys it")
    else:
        typer.echo(f"built {done['image']} with {done['tool']} (--push to push it)")

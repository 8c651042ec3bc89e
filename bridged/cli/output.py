"""How commands speak: tables and short lines for people, one JSON document with ``--json``.

Errors are one line on stderr (``bridged: <message>``) and, with ``--json``, also a JSON object
``{"error": {code, message, hint}}`` on stdout so scripts read one format.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from ..errors import BridgedError

F = TypeVar("F", bound=Callable[..., Any])


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


def emit(data: Any, json_out: bool, human: Callable[[Any], None] | None = None) -> None:
    if json_out:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif human is not None:
        human(data)


def fail(error: BridgedError, json_out: bool) -> None:
    if json_out:
        body = {"error": {"code": error.code, "message": error.message, "hint": error.hint}}
        sys.stdout.write(json.dumps(body) + "\n")
    sys.stderr.write(f"bridged: {error}\n")
    raise typer.Exit(error.exit_code)


def handles_errors(func: F) -> F:
    """Turn our errors into one line and an exit code, and any bug into one line too."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out"))
        try:
            return func(*args, **kwargs)
        except BridgedError as exc:
            fail(exc, json_out)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:
            if os.environ.get("BRIDGED_DEBUG"):
                raise
            fail(BridgedError(f"internal error: {type(exc).__name__}: {exc}",
                              hint="set BRIDGED_DEBUG=1 for the traceback"), json_out)

    return wrapper  # type: ignore[return-value]


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    Console().print(t)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def connecting_step(status: dict[str, Any]) -> tuple[str, float] | None:
    """The step a bridge being connected is at (``bridged connect``)."""
    step = next((b.get("step") for b in status["bridges"]
                 if b.get("state") == "connecting" and b.get("step")), None)
    return (step, 0.0) if step else None


def intercepting_step(status: dict[str, Any]) -> tuple[str, float] | None:
    """What an intercept being made waits for, and for how long (``bridged intercept``)."""
    waiting = status.get("intercepting") or []  # absent from an older daemon's status
    return (waiting[0]["step"], float(waiting[0]["seconds"])) if waiting else None


def with_progress(client: Any, request: Callable[[], Any], *, quiet: bool = False,
                  step: Callable[[dict[str, Any]], tuple[str, float] | None] = connecting_step
                  ) -> Any:
    """Run a long request while showing the step the daemon reports for it (``step`` reads it
    from the daemon's status: text, and seconds spent on it): a spinner with the seconds on a
    terminal, one line per new step otherwise (CI logs), nothing with ``--json``."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(request)
        if quiet:
            return future.result()
        shown = ""
        spinner = None
        if sys.stderr.isatty():
            from rich.console import Console

            spinner = Console(stderr=True).status("working")
            spinner.start()
        try:
            while True:
                try:
                    return future.result(timeout=0.25)
                except concurrent.futures.TimeoutError:
                    pass
                try:
                    found = step(client.get("status"))
                except BridgedError:
                    continue
                if found is None:
                    continue
                text, seconds = found
                if spinner is not None:
                    spinner.update(f"{text}… ({seconds:.0f} s)" if seconds >= 1 else text)
                elif text != shown:
                    sys.stderr.write(f"… {text}\n")  # errors alone start "bridged:"
                shown = text
        finally:
            if spinner is not None:
                spinner.stop()

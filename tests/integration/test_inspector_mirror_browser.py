"""The inspector in a real browser (headless chromium, selenium): a mirrored request made
through a real relay and daemon shows the laptop's answer beside the cluster's with the
differing lines marked; gRPC rows and a mirror's drops, from records put in a real store."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridged.capture.model import Captured, Message
from bridged.capture.store import CaptureStore
from bridged.inspector.server import Inspector
from bridged.localrun import RelayProcess

from ..helpers import Daemon, free_port, serve_http
from .test_inspector_browser import (  # noqa: F401 (pytestmark: skipped without chromium)
    WAIT,
    chromium,
    in_browser,
    marked,
    pytestmark,
    shot,
    unmarked,
    until,
)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "downloads") as d:
        yield d


class Answers:
    """A service answering {"who": name, "echo": <the JSON sent>}: the cluster's or the
    laptop's."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hits: list[str] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> Answers:
        async def handle(request: web.Request) -> web.Response:
            self.hits.append(request.path)
            return web.json_response({"who": self.name, "echo": await request.json()})

        self._runner, self.port = await serve_http(handle)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def cluster() -> AsyncIterator[Answers]:
    service = await Answers("cluster").start()
    yield service
    await service.stop()


@pytest.fixture
async def laptop() -> AsyncIterator[Answers]:
    service = await Answers("laptop").start()
    yield service
    await service.stop()


async def test_a_mirror_shows_both_answers_with_the_differing_line_marked(
        relay: RelayProcess, bridge: Daemon, cluster: Answers, laptop: Answers, driver: Any,
        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    port = free_port()
    made = await bridge.acli("intercept", "--relay-port", str(port), "--port", str(laptop.port),
                             "--mirror", "--header", "x-dev=alice", "--origin",
                             f"127.0.0.1:{cluster.port}", "--name", "orders", "--json")
    assert made.returncode == 0, made.stderr
    inspect = await bridge.acli("inspect", "--no-browser", "--json")
    assert inspect.returncode == 0, inspect.stderr
    url = json.loads(inspect.stdout)["url"]

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
        async with client.post(f"http://127.0.0.1:{port}/orders/7", headers={"x-dev": "alice"},
                               json={"n": 7, "items": [1, 2]}) as r:
            assert (await r.json())["who"] == "cluster"  # the client sees the cluster only

    def both_answers() -> None:
        driver.get(url)
        row = until(driver, lambda d: [r for r in d.find_elements(By.CSS_SELECTOR, "#rows tr")
                                       if "mirror" in r.text], "the mirrored request")[0]
        row.click()
        until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".answers .answer")) == 2,
              "the laptop's and the cluster's answers side by side")
        shot(driver, tmp_path, "11-mirror")
        mine, theirs = driver.find_elements(By.CSS_SELECTOR, ".answers .answer")
        assert mine.text.startswith("your laptop's answer 200")
        assert theirs.text.startswith("the cluster's answer (what the client got) 200")
        assert marked(mine, "del") == ['"who": "laptop",']
        assert marked(theirs, "add") == ['"who": "cluster",']
        common = unmarked(mine)
        assert common == unmarked(theirs) and '"n": 7,' in common and '"echo": {' in common
        assert not driver.find_elements(By.CSS_SELECTOR, ".answer .status.diff")  # 200 both
        assert "1 line only on the left, 1 line only on the right" in driver.find_element(
            By.ID, "detail").text

    await in_browser(both_answers)
    assert laptop.hits == cluster.hits == ["/orders/7"]


def _grpc(method: str, code: int | None) -> Captured:
    return Captured(intercept="orders", started=1_700_000_000.0, method="POST",
                    target=f"/{method}", authority="orders:50051", http_version="2", status=200,
                    duration_ms=2.0, grpc_method=method, grpc_status=code,
                    request=Message(headers=(("content-type", "application/grpc"),)),
                    response=Message(headers=(("content-type", "application/grpc"),)))


@pytest.fixture
async def inspector(tmp_path: Path) -> AsyncIterator[Inspector]:
    """An inspector on a real store, and a mirror whose relay dropped copies."""
    store = CaptureStore(tmp_path / "capture.sqlite")
    server = Inspector(store, {}.get, lambda: {"orders": {"queue-full": 3}, "carts": {}})
    await server.start()
    yield server
    await server.close()
    store.close()


async def test_grpc_rows_show_the_method_and_status_name_and_mirror_drops_show(
        inspector: Inspector, driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    for record in (_grpc("shop.Orders/Get", 5), _grpc("shop.Orders/List", 0),
                   _grpc("shop.Orders/Watch", None)):
        inspector.store.add(record)

    def shown() -> None:
        driver.get(inspector.url)
        rows = until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tr"),
                     "the records")
        assert len(rows) == 3
        shot(driver, tmp_path, "12-grpc")
        cells = driver.execute_script(
            "return [...document.querySelectorAll('#rows tr')].map((tr) => ["
            "tr.querySelector('td.path').lastChild.textContent,"
            "tr.querySelector('.grpc-status').textContent])")
        assert cells == [["shop.Orders/Watch", "no grpc-status"], ["shop.Orders/List", "OK"],
                         ["shop.Orders/Get", "NOT_FOUND"]]
        assert driver.find_element(By.ID, "stats").text == (
            "3 stored · mirror orders: copies dropped 3 queue-full")
        rows[-1].click()
        until(driver, lambda d: "gRPC status\n5 NOT_FOUND" in d.find_element(By.ID, "detail")
              .text, "the call's status, by number and name, in its detail")

    await in_browser(shown)


async def test_a_mirror_whose_cluster_answer_was_not_seen_says_so(
        inspector: Inspector, driver: Any, tmp_path: Path) -> None:
    """Gateway mirrors: the mesh answers the client, the relay never sees that answer. The
    laptop's answer stands alone, not compared with an empty one."""
    from selenium.webdriver.common.by import By

    json_head = (("content-type", "application/json"),)
    record = inspector.store.add(Captured(
        intercept="orders", started=1_700_000_000.0, method="GET", target="/orders/1",
        status=200, kind="mirror", request=Message(),
        response=Message(headers=json_head, body=b'{"who": "laptop"}', size=17),
        cluster=Message(), cluster_status=0))

    def shown() -> None:
        driver.get(inspector.url)
        until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tr"),
              "the record")[0].click()
        until(driver, lambda d: "the cluster's answer was not seen" in d.find_element(
            By.ID, "detail").text, "why there is nothing to compare")
        shot(driver, tmp_path, "13-mirror-unseen")
        [answer] = driver.find_elements(By.CSS_SELECTOR, ".answers .answer, #detail .answer")
        assert answer.text.startswith("your laptop's answer 200") and '"who": "laptop"' in \
            answer.text
        assert not driver.find_elements(By.CSS_SELECTOR, ".line.del, .line.add")

    await in_browser(shown)
    assert record.id == 1

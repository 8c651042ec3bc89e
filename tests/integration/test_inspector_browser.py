"""The inspector in a real browser: Debian's headless chromium driven by selenium, against a
real relay and daemon, with a request sent through an intercept as a client in the cluster
would. Screenshots of each state go to the test's folder and to /tmp/inspector-shots."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shlex
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from bridged.localrun import RelayProcess

from ..harschema import validate_har
from ..helpers import Daemon, free_port, serve_http

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium
except ImportError:  # pragma: no cover - the test extras install it
    selenium = None

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and selenium),
    reason="needs Debian's chromium and chromium-driver and selenium (.ci/run installs them)")

SHOTS = Path("/tmp/inspector-shots")
SECRET = "Bearer sk-live-browser-5ecret-9f2c"
WAIT = 20.0  # seconds any one thing the page shows may take to show
T = TypeVar("T")


class LocalService:
    """The developer's service: answers with what it got and counts its hits."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str, bytes]] = []
        self.headers: list[dict[str, str]] = []  # each hit's headers
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> LocalService:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.hits.append((request.method, request.path_qs, body))
            self.headers.append(dict(request.headers))
            return web.json_response({"hit": len(self.hits), "path": request.path_qs,
                                      "sha256": hashlib.sha256(body).hexdigest()})

        self._runner, self.port = await serve_http(handle)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def local_service() -> AsyncIterator[LocalService]:
    service = await LocalService().start()
    yield service
    await service.stop()


@contextmanager
def chromium(downloads: Path) -> Iterator[Any]:
    """Headless chromium, its downloads going to ``downloads``; quit on leaving."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-sync"):
        options.add_argument(arg)
    downloads.mkdir(exist_ok=True)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    d.downloads = downloads
    d.set_script_timeout(WAIT)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "downloads") as d:
        yield d


async def in_browser(fn: Callable[[], T]) -> T:
    """Selenium blocks: it runs beside the event loop, which serves the local service."""
    return await asyncio.wait_for(asyncio.to_thread(fn), WAIT * 2)


def shot(driver: Any, tmp_path: Path, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(tmp_path / f"{name}.png"))
    shutil.copy(tmp_path / f"{name}.png", SHOTS / f"{name}.png")


def marked(answer: Any, side: str) -> list[str]:
    """The body lines of an answer marked as differing from the other answer."""
    from selenium.webdriver.common.by import By

    return [e.text.strip() for e in answer.find_elements(By.CSS_SELECTOR, f"pre .line.{side}")]


def unmarked(answer: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text.strip() for e in answer.find_elements(By.CSS_SELECTOR, "pre .line")
            if "del" not in e.get_attribute("class") and "add" not in e.get_attribute("class")]


def until(driver: Any, check: Callable[[Any], Any], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check, message=what)


async def test_live_detail_replay_and_har_in_a_real_browser(
        relay: RelayProcess, bridge: Daemon, local_service: LocalService, driver: Any,
        tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    relay_port = free_port()
    made = await bridge.acli("intercept", "--relay-port", str(relay_port), "--port",
                             str(local_service.port), "--header", "x-dev=me", "--name",
                             "orders", "--json")
    assert made.returncode == 0, made.stderr
    inspect = await bridge.acli("inspect", "--no-browser", "--json")
    assert inspect.returncode == 0, inspect.stderr
    url = json.loads(inspect.stdout)["url"]

    def opened() -> None:
        driver.get(url)
        until(driver, lambda d: "off" not in d.find_element(By.ID, "live").get_attribute(
            "class"), "the live stream to open")
        driver.execute_script("window.notReloaded = true")
        shot(driver, tmp_path, "01-empty")

    await in_browser(opened)
    assert driver.current_url.endswith("/")  # the token left the address bar

    # a client in the cluster sends a request through the intercept
    body = json.dumps({"user": "alice", "items": [1, 2, 3], "note": "hello"}).encode()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as client:
        async with client.post(f"http://127.0.0.1:{relay_port}/orders?dry=1", data=body,
                               headers={"x-dev": "me", "Authorization": SECRET,
                                        "Content-Type": "application/json"}) as r:
            assert r.status == 200
            assert (await r.json())["sha256"] == hashlib.sha256(body).hexdigest()
    assert len(local_service.hits) == 1

    def live_row() -> Any:
        row = until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#rows tr"),
                    "the request to appear in the list")[0]
        assert driver.execute_script("return window.notReloaded") is True  # no reload
        assert "/orders?dry=1" in row.text and "POST" in row.text and "200" in row.text
        shot(driver, tmp_path, "02-live")
        return row

    row = await in_browser(live_row)

    def detail() -> None:
        row.click()
        until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#detail pre.json"),
              "the detail view")
        shot(driver, tmp_path, "03-detail")
        page = driver.find_element(By.ID, "detail").text
        assert "[redacted]" in page and SECRET not in page
        assert "sk-live" not in driver.page_source
        pretty = driver.find_elements(By.CSS_SELECTOR, "#detail pre.json")[-1].text  # request
        assert '"user": "alice"' in pretty and '\n  "items": [\n    1,' in pretty

    await in_browser(detail)

    def replayed() -> None:
        driver.find_element(By.ID, "replay").click()
        until(driver, lambda d: "replay #" in d.find_element(By.ID, "detail").text,
              "the replay's answer beside the captured one")
        answers = driver.find_elements(By.CSS_SELECTOR, ".answers .answer")
        assert len(answers) == 2
        assert answers[0].text.startswith("captured answer") and '"hit": 1' in answers[0].text
        assert answers[1].text.startswith("replay #") and '"hit": 2' in answers[1].text
        # exactly the line that differs is marked, on each side; the common lines are not
        assert marked(answers[0], "del") == ['"hit": 1,'] and marked(answers[1], "add") == [
            '"hit": 2,']
        assert unmarked(answers[0]) == unmarked(answers[1]) and '"path": "/orders?dry=1",' in \
            unmarked(answers[0])
        until(driver, lambda d: any("replay of" in r.text
                                    for r in d.find_elements(By.CSS_SELECTOR, "#rows tr")),
              "the replay in the list")
        shot(driver, tmp_path, "04-replay")

    await in_browser(replayed)
    assert local_service.hits[1] == ("POST", "/orders?dry=1", body)  # the same request again

    def typing() -> None:
        driver.find_element(By.ID, "edit").click()
        form = driver.find_element(By.CSS_SELECTOR, "form.edit")
        target = form.find_element(By.NAME, "target")
        target.clear()
        target.send_keys("/orders/edited")
        text = form.find_element(By.NAME, "body")
        text.clear()
        text.send_keys('{"user": "bob"}')
        shot(driver, tmp_path, "05-edit")

    await in_browser(typing)
    # while the developer types, another tab replays the record: a live event for the
    # selected record redraws its answers, not the form being typed in
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as other:
        async with other.post(url.replace("/?", "/api/records/1/replay?"), json={},
                              headers={"X-Bridged-Inspector": "1"}) as r:
            assert r.status == 201, await r.text()
            third = (await r.json())["record"]["id"]

    def edited() -> None:
        until(driver, lambda d: f"replay #{third}" in d.find_element(By.ID, "detail").text,
              "the other tab's replay, live, beside the captured answer")
        form = driver.find_element(By.CSS_SELECTOR, "form.edit")
        assert form.is_displayed()
        assert form.find_element(By.NAME, "target").get_attribute("value") == "/orders/edited"
        assert form.find_element(By.NAME, "body").get_attribute("value") == '{"user": "bob"}'
        assert driver.execute_script("return document.activeElement.name") == "body"
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        until(driver, lambda d: '"hit": 4' in d.find_element(By.ID, "detail").text,
              "the edited replay's answer")
        shot(driver, tmp_path, "06-edited-replay")

    await in_browser(edited)
    assert local_service.hits[2] == ("POST", "/orders?dry=1", body)
    assert local_service.hits[3] == ("POST", "/orders/edited", b'{"user": "bob"}')

    def har() -> Path:
        driver.find_element(By.ID, "har").click()
        return until(driver, lambda d: [p for p in d.downloads.glob("*.har")],
                     "the HAR download")[0]

    har_file = await in_browser(har)
    document = json.loads(har_file.read_text())
    validate_har(document)
    entries = document["log"]["entries"]
    assert [e["request"]["url"].split("/", 3)[3] for e in entries] == [
        "orders?dry=1", "orders?dry=1", "orders?dry=1", "orders/edited"]
    assert [e["_bridged"]["kind"] for e in entries] == ["intercept", "replay", "replay",
                                                        "replay"]
    assert json.loads(entries[0]["request"]["postData"]["text"]) == json.loads(body)
    assert SECRET not in har_file.read_text()

    def command() -> str:
        driver.find_element(By.ID, "curl").click()
        shown = until(driver, lambda d: d.find_element(By.ID, "curl-text").text,
                      "the curl command")
        shot(driver, tmp_path, "07-curl")
        return str(shown)

    # "Copy as curl", run as a developer would, sends the captured request again
    words = shlex.split(await in_browser(command))
    assert words[0] == "curl" and SECRET not in " ".join(words)
    ran = await asyncio.create_subprocess_exec(*words, stdout=asyncio.subprocess.PIPE,
                                               stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(ran.communicate(), WAIT)
    assert ran.returncode == 0, err
    assert out.startswith(b"HTTP/1.1 200") and b'"hit": 5' in out
    assert local_service.hits[4] == local_service.hits[0] == ("POST", "/orders?dry=1", body)
    sent, again = local_service.headers[0], local_service.headers[4]
    assert "Authorization" in sent and "Authorization" not in again  # redacted: not sent
    for name in ("x-dev", "Content-Type", "Host", "Accept-Encoding"):
        assert again[name] == sent[name]

    # the database never held the secret (the tap and the store redact before writing)
    db = bridge.process.home / "state" / "bridged" / "capture.sqlite"
    stored = b"".join(p.read_bytes() for p in db.parent.glob("capture.sqlite*"))
    assert b"alice" in stored and SECRET.encode() not in stored

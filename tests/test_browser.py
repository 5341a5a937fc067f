"""The shipped upload widget in a real browser: Debian's Chromium, driven by Playwright.

gunicorn serves the test project's ``/uploader/`` page (``queued_storage/uploader.html`` and the
package's own ``static/queued_storage/uploader.js``), the suite's Celery worker transfers to
moto. The browser uploads a 20 MiB file and a small PNG, and the test watches what a user sees:
the upload bars reach 100 %, each state goes ``pending`` → (``transferring``) → ``remote``, and
the link and image leave the staging URL for the S3 URL, which serves the same bytes.

In tus mode (``data-tus-url``) the page sends a 12 MiB file in 1 MiB ``PATCH`` chunks; the test
reloads the page mid-way and picks the same file again: the widget finds the upload it
remembered in ``localStorage``, asks the server for its offset and sends only the rest; then
the network drops mid-chunk, and the widget asks for the offset again and goes on by itself.
A ``PATCH`` that hangs (no progress, no answer) is aborted after the widget's stall timeout
and resumed the same way.

An independent client checks the tus server: tus-js-client (``tests/assets/tus-js-client/``,
vendored) in a page of the test site, behind a fault proxy that drops one request's connection
after half its body and holds another while the page reloads.

In direct mode (``data-mode="direct"``) the page sends a 24 MiB file in 5 MiB parts straight
to moto with the presigned URLs the site answers (the bucket's CORS rule allows the page's
origin), through the S3 fault proxy: one part's connection drops half-way and the widget sends
the part again; the page reloads while another part is held, and the widget asks the site which
parts S3 holds and sends only the others. The widget's CRC32 is checked against zlib's.

A screenshot of each stage is kept in ``.test-artifacts/browser/`` (git-ignored). Without
Chromium or Playwright the test skips, or fails under ``QUEUED_STORAGE_TEST_STRICT=1``.
``QS_TEST_CHROMIUM`` names another Chromium binary than ``chromium`` on ``PATH``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import importlib.util
import io
import os
import shutil
import time
import zlib
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import Client

import queued_storage
from queued_storage import direct
from queued_storage.models import State, StoredFile, TusUpload
from queued_storage.tus import parse_metadata
from tests.harness.faults import HttpFaultProxy
from tests.harness.suite import django_server, need_tool, open_uploads, s3_bytes, wait_for
from tests.harness.webservers import DjangoServer
from tests.testapp.models import Document

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

MiB = 1024 * 1024
ARTIFACTS = Path(__file__).resolve().parents[1] / ".test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium calls home, and a closed network refuses its connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = 'apt-get install -y chromium (.ci/run installs it); pip install -e ".[test]"'

#: Collects what the widget showed, from its own events, in the order it showed it.
RECORDER = """
window.qsSeen = [];
document.addEventListener("queued-storage:state", (event) => {
  const s = event.detail.status;
  window.qsSeen.push({file: event.detail.file.name, state: s.state, url: s.url});
});
document.addEventListener("queued-storage:error", (event) => {
  window.qsSeen.push({file: event.detail.file.name, state: "error", url: event.detail.message});
});
"""


#: Every text the widget's state showed, in order (a MutationObserver sees each change, however
#: briefly it stays).
STATE_RECORDER = """
window.qsStates = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll(".qs-state")) {
    if (window.qsStates[window.qsStates.length - 1] !== node.textContent) {
      window.qsStates.push(node.textContent);
    }
  }
}).observe(document, {subtree: true, childList: true, characterData: true});
"""

TUS_JS_CLIENT_VERSION = "4.3.1"

#: The tus-js-client page's application code: one upload of the picked file, resumed from the
#: upload tus-js-client remembered for this file (its fingerprint in ``localStorage``) if there
#: is one, as tus-js-client's documentation shows. Retries are tus-js-client's own (its default
#: ``retryDelays``); the page only records what happened in ``window.tusLog``.
START_TUS_JS_UPLOAD = """
async ({endpoint, chunkSize}) => {
  const file = document.querySelector("input[type=file]").files[0];
  const log = (window.tusLog = window.tusLog || []);
  const upload = new tus.Upload(file, {
    endpoint,
    chunkSize,
    metadata: {filename: file.name, filetype: file.type},
    removeFingerprintOnSuccess: true,
    onError: (error) => log.push({event: "error", message: String(error)}),
    onSuccess: ({lastResponse}) => log.push({
      event: "success",
      url: upload.url,
      name: lastResponse.getHeader("X-Queued-Storage-Name"),
    }),
  });
  const previous = await upload.findPreviousUploads();
  if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
  upload.start();
  log.push({event: "start", previous: previous.map((p) => p.uploadUrl)});
  return previous.map((p) => p.uploadUrl);
}
"""

#: The upload URLs tus-js-client keeps in ``localStorage`` (its keys start with ``tus::``).
REMEMBERED_BY_TUS_JS = """() => Object.keys(localStorage)
  .filter((key) => key.startsWith("tus::"))
  .map((key) => JSON.parse(localStorage.getItem(key)).uploadUrl)"""


@dataclasses.dataclass
class TusExchange:
    """One tus request of the page: what it sent and what came back (``status`` ``None``: no
    answer, ``failure`` says why)."""

    method: str
    offset: int | None  # the request's Upload-Offset
    status: int | None = None
    answer: int | None = None  # the answer's Upload-Offset
    name: str | None = None  # the answer's X-Queued-Storage-Name
    failure: str | None = None


class TusTraffic:
    """Records, in order, every request a page sends to ``/uploads/tus/``, and its answer."""

    def __init__(self, page: Any) -> None:
        self.exchanges: list[TusExchange] = []
        self._by_request: dict[Any, TusExchange] = {}
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("requestfailed", self._failed)

    def _request(self, request: Any) -> None:
        if "/uploads/tus/" in request.url:
            exchange = TusExchange(request.method, _int(request.headers.get("upload-offset")))
            self.exchanges.append(exchange)
            self._by_request[request] = exchange

    def _response(self, response: Any) -> None:
        exchange = self._by_request.get(response.request)
        if exchange is not None:
            exchange.status = response.status
            exchange.answer = _int(response.headers.get("upload-offset"))
            exchange.name = response.headers.get("x-queued-storage-name")

    def _failed(self, request: Any) -> None:
        exchange = self._by_request.get(request)
        if exchange is not None:
            exchange.failure = request.failure or "failed"


def assert_each_patch_starts_where_the_server_is(exchanges: list[TusExchange]) -> None:
    """Every PATCH starts at the offset the server gave last: the answer of the request before
    it (creation, HEAD, or the PATCH before it). After a request without an answer (or with
    an error) the client must ask (HEAD) before it sends again."""
    known: int | None = None
    for exchange in exchanges:
        if exchange.method == "PATCH":
            assert exchange.offset is not None and exchange.offset == known, exchanges
        known = exchange.answer if exchange.status in (200, 201, 204) else None


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _upload_offset(headers: Message) -> int:
    """A request's Upload-Offset, for the proxy's ``when=`` (-1 without one)."""
    value = headers.get("Upload-Offset")
    return int(value) if value else -1


def _server_offset() -> int:
    """The offset in the upload's ledger row (what the server has), read in a thread of its
    own: Django refuses to query inside the event loop Playwright's sync API runs here."""

    def read() -> int:
        try:
            return TusUpload.objects.get().offset
        finally:
            connections.close_all()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(read).result()


def _signed_in(username: str) -> tuple[User, str]:
    """A user who may upload and read statuses, and a session cookie value for them."""
    user = User.objects.create_user(username)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_storedfile", "view_storedfile"])
    )
    client = Client()
    client.force_login(user)
    return user, client.cookies[settings.SESSION_COOKIE_NAME].value


@contextlib.contextmanager
def proxied_server(workdir: str) -> Iterator[tuple[DjangoServer, HttpFaultProxy]]:
    """The test project on gunicorn, and the fault proxy the browser reaches it through (one
    connection per request: see :class:`HttpFaultProxy`'s ``keep_alive``)."""
    with (
        django_server("gunicorn", workdir) as server,
        HttpFaultProxy(
            ("127.0.0.1", server.port), name=f"{workdir}-proxy", keep_alive=False
        ) as proxy,
    ):
        yield server, proxy


def _need_chromium() -> None:
    """Fail (strict mode) or skip unless Playwright and a Chromium to drive are installed."""
    need_tool("Playwright", importlib.util.find_spec("playwright") is not None, INSTALL_HINT)
    need_tool("Chromium", chromium_path() is not None, INSTALL_HINT)


def chromium_path() -> str | None:
    """``QS_TEST_CHROMIUM`` if set (a path), else ``chromium`` on ``PATH``."""
    given = os.environ.get("QS_TEST_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("chromium")


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def png_bytes() -> bytes:
    from PIL import Image

    image = Image.new("RGB", (64, 48), (32, 94, 166))
    for x in range(0, 64, 8):
        for y in range(48):
            image.putpixel((x, y), (255, 200, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_the_shipped_widget_uploads_with_progress_and_follows_each_file_to_s3(
    worker: Any, clean: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _need_chromium()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * MiB))
    picture = tmp_path / "picture.png"
    picture.write_bytes(png_bytes())
    sent = {"big.bin": big.read_bytes(), "picture.png": picture.read_bytes()}

    user, session = _signed_in("browser-user")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("[0-9]*.png"):
        old.unlink()
    shots: list[Path] = []
    started = time.monotonic()
    try:
        with django_server("gunicorn", "web-browser") as server, browser_page() as browser:
            context = browser.new_context(viewport={"width": 900, "height": 700})
            context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": server.url}]
            )
            page = context.new_page()
            page.add_init_script(RECORDER)
            page.goto(f"{server.url}/uploader/")

            def shoot(stage: str) -> None:
                path = ARTIFACTS / f"{len(shots) + 1}-{stage}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            shoot("empty")
            page.set_input_files("input[type=file]", [str(big), str(picture)])

            # The XHR upload bars reach 100 % once the upload view has answered.
            page.wait_for_function(
                """() => {
                  const items = document.querySelectorAll(".qs-file[data-stored-name]");
                  return items.length === 2 && [...items].every(
                    (i) => i.querySelector(".qs-upload-progress").value === 100);
                }""",
                timeout=15_000,
            )
            items = page.locator(".qs-file")
            for index in range(2):
                assert items.nth(index).locator(".qs-upload-percent").inner_text() == "100 %"
            shoot("uploaded")

            # The 20 MiB file's transfer runs in 5 MiB parts: its state shows the progress.
            big_state = page.locator('.qs-file[data-file-name="big.bin"] .qs-state')
            page.wait_for_function(
                """() => ["transferring", "remote"].includes(
                  document.querySelector('.qs-file[data-file-name="big.bin"]').dataset.state)""",
                timeout=20_000,
            )
            shoot(big_state.get_attribute("data-state") or "unknown")

            page.wait_for_function(
                """() => [...document.querySelectorAll(".qs-file")].every(
                  (i) => ["remote", "failed", "error"].includes(i.dataset.state))""",
                timeout=20_000,
            )
            link_hrefs = {
                name: page.locator(f'.qs-file[data-file-name="{name}"] .qs-link').get_attribute(
                    "href"
                )
                for name in sent
            }
            img = page.locator('.qs-file[data-file-name="picture.png"] img.qs-preview')
            img_src = img.get_attribute("src")
            page.wait_for_function(
                """() => { const i = document.querySelector("img.qs-preview");
                           return i.complete && i.naturalWidth > 0; }""",
                timeout=10_000,
            )
            natural = img.evaluate("(i) => [i.naturalWidth, i.naturalHeight]")
            states = {
                name: page.locator(f'.qs-file[data-file-name="{name}"] .qs-state').inner_text()
                for name in sent
            }
            shoot("remote")
            seen: list[dict[str, Any]] = page.evaluate("window.qsSeen")
            stored = {
                name: page.locator(f'.qs-file[data-file-name="{name}"]').get_attribute(
                    "data-stored-name"
                )
                for name in sent
            }
            context.close()
    finally:
        with capsys.disabled():
            print(
                f"\nbrowser screenshots ({time.monotonic() - started:.1f}s): "
                + ", ".join(str(p) for p in shots)
            )

    assert states == {"big.bin": "remote", "picture.png": "remote"}, seen
    s3 = settings.S3_ENDPOINT.rstrip("/") + f"/{settings.BUCKET}/"
    for name, data in sent.items():
        shown = [event for event in seen if event["file"] == name]
        order = [event["state"] for event in shown]
        # What the user saw, in order: pending first (the upload view's answer, served from the
        # staging disk), maybe transferring, remote last; never backwards, never an error.
        assert order[0] == "pending" and order[-1] == "remote", order
        ranks = [["pending", "transferring", "remote"].index(state) for state in order]
        assert ranks == sorted(ranks), order
        assert shown[0]["url"].startswith("/staging/"), shown[0]
        assert all(e["url"].startswith("/staging/") for e in shown if e["state"] != "remote")
        final = link_hrefs[name]
        assert final == shown[-1]["url"] and final.startswith(s3), (final, s3)
        response = requests.get(final, timeout=30)
        assert response.status_code == 200
        assert response.content == data, f"the S3 copy of {name} differs"
        row = StoredFile.objects.get(name=stored[name])
        assert (row.state, row.size, row.owner) == (State.REMOTE, len(data), str(user.pk))
    assert img_src == link_hrefs["picture.png"]
    assert natural == [64, 48]
    assert [p.name for p in shots][:2] == ["1-empty.png", "2-uploaded.png"]
    assert shots[-1].name == f"{len(shots)}-remote.png"


def test_the_widget_in_tus_mode_resumes_after_a_reload_from_the_servers_offset(
    worker: Any, clean: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _need_chromium()
    big = tmp_path / "resumed.bin"
    big.write_bytes(os.urandom(12 * MiB))
    data = big.read_bytes()

    user, session = _signed_in("tus-browser-user")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("tus-*.png"):
        old.unlink()
    shots: list[Path] = []
    #: Every tus request the page sent: (method, Upload-Offset or None).
    sent: list[tuple[str, int | None]] = []
    started = time.monotonic()
    item = '.qs-file[data-file-name="resumed.bin"]'
    try:
        with django_server("gunicorn", "web-browser-tus") as server, browser_page() as browser:
            context = browser.new_context(viewport={"width": 900, "height": 500})
            context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": server.url}]
            )
            page = context.new_page()
            page.add_init_script(RECORDER)

            def record(request: Any) -> None:
                if "/uploads/tus/" in request.url:
                    offset = request.headers.get("upload-offset")
                    sent.append((request.method, int(offset) if offset else None))

            page.on("request", record)

            def shoot(stage: str) -> None:
                path = ARTIFACTS / f"tus-{len(shots) + 1}-{stage}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)

            # Chromium's network emulation: 6 MiB/s up while a cut is due, offline to drop
            # the connection (it fails the request in flight).
            network = context.new_cdp_session(page)
            network.send("Network.enable")

            def emulate(upload: int = -1, *, offline: bool = False) -> None:
                network.send(
                    "Network.emulateNetworkConditions",
                    {
                        "offline": offline,
                        "latency": 0,
                        "downloadThroughput": -1,
                        "uploadThroughput": upload,
                    },
                )

            def progress(at_least: int) -> None:
                page.wait_for_function(
                    f"""() => document.querySelector('{item} .qs-upload-progress')
                                  .value >= {at_least}""",
                    timeout=10_000,
                )

            emulate(6 * MiB)
            page.goto(f"{server.url}/uploader/?tus={MiB}")
            page.set_input_files("input[type=file]", [str(big)])
            progress(30)
            shoot("cut")
            emulate()
            page.reload()
            # What the server holds now (the remembered upload's HEAD, as the user).
            upload_url = page.evaluate("Object.values(localStorage)[0]")
            head = requests.head(
                upload_url,
                headers={"Tus-Resumable": "1.0.0"},
                cookies={settings.SESSION_COOKIE_NAME: session},
                timeout=10,
            )
            offset_before = int(head.headers["Upload-Offset"])
            first_visit = len(sent)
            emulate(6 * MiB)
            page.set_input_files("input[type=file]", [str(big)])
            # Then the connection drops mid-chunk: the widget retries by itself.
            progress(75)
            emulate(offline=True)
            page.wait_for_function(
                f"() => document.querySelector('{item} .qs-state').dataset.state === 'retrying'",
                timeout=5_000,
            )
            shoot("retrying")
            dropped = len(sent)
            emulate()
            page.wait_for_function(
                f"""() => ["remote", "failed", "error"].includes(
                          document.querySelector('{item}')?.dataset.state)""",
                timeout=15_000,
            )
            shoot("remote")
            state = page.locator(f"{item} .qs-state").inner_text()
            resumed_from = page.locator(item).get_attribute("data-resumed-from")
            href = page.locator(f"{item} .qs-link").get_attribute("href")
            stored = page.locator(item).get_attribute("data-stored-name")
            remembered = page.evaluate("Object.keys(localStorage)")
            seen: list[dict[str, Any]] = page.evaluate("window.qsSeen")
            context.close()
    finally:
        with capsys.disabled():
            print(
                f"\nbrowser screenshots, tus ({time.monotonic() - started:.1f}s): "
                + ", ".join(str(p) for p in shots)
            )

    assert state == "remote", seen
    # The first visit created the upload and sent part of it; the server kept that part.
    assert sent[0] == ("POST", None)
    assert 0 < offset_before < len(data), offset_before
    # The second pick created nothing: HEAD, then PATCHes from the server's offset on.
    again = sent[first_visit:]
    assert again[0] == ("HEAD", None) and "POST" not in [m for m, _ in again], again
    patches = [offset for method, offset in again if method == "PATCH"]
    assert resumed_from is not None and patches[0] == int(resumed_from) >= offset_before
    assert patches == sorted(patches), patches
    resent = len(data) - patches[0]
    assert resent <= len(data) - offset_before < len(data), (resent, offset_before)
    upload = TusUpload.objects.get()
    assert upload_url.endswith(f"/uploads/tus/{upload.id}"), upload_url
    assert (upload.offset, upload.stored_name) == (len(data), stored)
    assert remembered == []  # the finished upload is forgotten
    s3 = settings.S3_ENDPOINT.rstrip("/") + f"/{settings.BUCKET}/"
    assert href is not None and href.startswith(s3), href
    response = requests.get(href, timeout=30)
    assert response.status_code == 200 and response.content == data, "the S3 copy differs"
    row = StoredFile.objects.get(name=stored)
    assert (row.state, row.size, row.owner) == (State.REMOTE, len(data), str(user.pk))
    # After the drop: HEAD for the offset, then the PATCHes go on from it.
    after_drop = [m for m, _ in sent[dropped:]]
    assert after_drop[0] == "HEAD" and set(after_drop) == {"HEAD", "PATCH"}, sent[dropped:]
    names = [p.name for p in shots]
    assert names == ["tus-1-cut.png", "tus-2-retrying.png", "tus-3-remote.png"]
    with capsys.disabled():
        print(f"tus: cut at {offset_before} of {len(data)} bytes; re-sent {resent}")


def test_tus_js_client_resumes_after_a_dropped_connection_and_a_reload_from_the_servers_offset(
    worker: Any, clean: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tus-js-client, not our widget: its own retry after a dropped connection, and its own
    resume (``findPreviousUploads()``, ``resumeFromPreviousUpload()``) after a reload, both
    from the offset the server reports; then the file goes to S3 byte for byte.

    The connection is dropped by the proxy, not by Chromium's offline mode: offline,
    ``navigator.onLine`` is false and tus-js-client does not retry (``isOnline()`` in its
    ``shouldRetry``); the page would have to restart the upload itself.
    """
    _need_chromium()
    size, chunk, cut_after = 12 * MiB, MiB, 512 * 1024
    source = tmp_path / "tus-js.bin"
    source.write_bytes(os.urandom(size))
    data = source.read_bytes()
    user, session = _signed_in("tus-js-client-user")

    started = time.monotonic()
    with proxied_server("web-browser-tus-js") as (_server, proxy):
        base = proxy.endpoint_url
        # (a) The PATCH at 3 MiB reaches the server with half its body, then its connection
        # drops. (b) The first PATCH from 7 MiB on is held (the server sees nothing of it)
        # while the page reloads.
        cut = proxy.interrupt_next(
            "PATCH", after_bytes=cut_after, when=lambda h: _upload_offset(h) == 3 * MiB
        )
        hold = proxy.interrupt_next("PATCH", when=lambda h: _upload_offset(h) >= 7 * MiB)
        start = {"endpoint": f"{base}/uploads/tus/", "chunkSize": chunk}
        with browser_page() as browser:
            context = browser.new_context()
            context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": base}]
            )
            page = context.new_page()
            traffic = TusTraffic(page)
            page.goto(f"{base}/tus-js-client/")
            assert page.evaluate("tus.isSupported") is True
            page.set_input_files("input[type=file]", [str(source)])
            assert page.evaluate(START_TUS_JS_UPLOAD, start) == []

            assert cut.wait(60), "no PATCH at 3 MiB"
            kept = _server_offset()  # while the client still waits for an answer
            cut.release()

            assert hold.wait(60), "no PATCH from 7 MiB on"
            at_reload = _server_offset()
            remembered_before = page.evaluate(REMEMBERED_BY_TUS_JS)
            log_before = page.evaluate("window.tusLog")
            page.reload()
            hold.release()
            reloaded = len(traffic.exchanges)
            page.set_input_files("input[type=file]", [str(source)])
            previous = page.evaluate(START_TUS_JS_UPLOAD, start)
            page.wait_for_function(
                "() => window.tusLog.some((entry) => entry.event !== 'start')", timeout=60_000
            )
            log_after = page.evaluate("window.tusLog")
            remembered_after = page.evaluate(REMEMBERED_BY_TUS_JS)
            context.close()
    upload = TusUpload.objects.get()
    stored = upload.stored_name
    wait_for(
        lambda: StoredFile.objects.filter(name=stored, state=State.REMOTE).exists(),
        timeout=60,
        what=f"{stored!r} to reach S3",
    )
    elapsed = time.monotonic() - started

    upload_url = f"{base}/uploads/tus/{upload.id}"
    exchanges = traffic.exchanges
    first_visit, second_visit = exchanges[:reloaded], exchanges[reloaded:]
    # One upload was created, with the metadata tus-js-client sends.
    assert [e.method for e in exchanges].count("POST") == 1
    assert (exchanges[0].method, exchanges[0].status) == ("POST", 201)
    assert parse_metadata(upload.metadata) == {
        "filename": "tus-js.bin",
        "filetype": "application/octet-stream",
    }
    assert upload.content_type == "application/octet-stream"

    # (a) The server kept the half chunk that arrived before the connection dropped.
    assert (cut.forwarded, cut.upstream_status, cut.error) == (cut_after, 400, None)
    assert kept == 3 * MiB + cut_after
    dropped = next(i for i, e in enumerate(first_visit) if e.offset == 3 * MiB)
    assert first_visit[dropped].status is None and first_visit[dropped].failure, first_visit
    # tus-js-client retried by itself: HEAD, then the PATCH from the offset the server had.
    head, resumed = first_visit[dropped + 1 : dropped + 3]
    assert (head.method, head.status, head.answer) == ("HEAD", 200, kept)
    assert (resumed.method, resumed.offset, resumed.status) == ("PATCH", kept, 204)
    assert [entry["event"] for entry in log_before] == ["start"]  # no onError, one start()
    # What was sent twice: the half chunk the server did not get. Bytes of PATCH bodies, up
    # to the held PATCH (tus-js-client sends chunkSize from the offset, less at the end).
    held = first_visit[-1]
    assert (held.method, held.status, held.offset) == ("PATCH", None, at_reload)
    patched = sum(min(chunk, size - e.offset) for e in first_visit[:-1] if e.offset is not None)
    resent = patched - at_reload
    assert resent == chunk - cut_after and 0 < resent < chunk, resent

    # (b) After the reload tus-js-client found the upload it remembered, asked the server for
    # its offset (nothing of the held PATCH arrived) and sent the rest, nothing twice.
    assert remembered_before == [upload_url]
    assert previous == [upload_url]
    assert at_reload >= 7 * MiB
    assert (second_visit[0].method, second_visit[0].status) == ("HEAD", 200)
    assert second_visit[0].answer == at_reload
    patches = second_visit[1:]
    assert [(e.method, e.status) for e in patches] == [("PATCH", 204)] * len(patches)
    assert [e.offset for e in patches] == list(range(at_reload, size, chunk))
    assert_each_patch_starts_where_the_server_is(exchanges)

    # (c) The last answer names the stored file; it is on S3, byte for byte.
    assert log_after[0] == {"event": "start", "previous": [upload_url]}
    assert log_after[1:] == [{"event": "success", "url": upload_url, "name": "tus-js.bin"}]
    assert patches[-1].name == stored == "tus-js.bin"
    assert remembered_after == []  # removeFingerprintOnSuccess
    assert (upload.offset, upload.completed is not None) == (size, True)
    row = StoredFile.objects.get(name=stored)
    assert (row.state, row.size, row.owner) == (State.REMOTE, size, str(user.pk))
    assert s3_bytes(clean, stored) == data, "the S3 copy differs"
    with capsys.disabled():
        print(
            f"\ntus-js-client {TUS_JS_CLIENT_VERSION} ({elapsed:.1f}s): cut at {kept} "
            f"(re-sent {resent}), reloaded at {at_reload} of {size} bytes"
        )


def test_the_widget_in_tus_mode_aborts_a_stalled_patch_and_resumes_from_the_servers_offset(
    worker: Any, clean: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``PATCH`` that neither fails nor progresses (the proxy holds it and never answers):
    after ``data-stall-timeout`` the widget aborts it, asks for the offset and goes on."""
    _need_chromium()
    size, chunk, stall_ms = 6 * MiB, MiB, 3000
    source = tmp_path / "stalled.bin"
    source.write_bytes(os.urandom(size))
    data = source.read_bytes()
    user, session = _signed_in("tus-stall-user")
    item = '.qs-file[data-file-name="stalled.bin"]'

    started = time.monotonic()
    with proxied_server("web-browser-tus-stall") as (_server, proxy):
        base = proxy.endpoint_url
        stall = proxy.interrupt_next("PATCH", when=lambda h: _upload_offset(h) == 2 * MiB)
        with browser_page() as browser:
            context = browser.new_context()
            context.add_cookies(
                [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": base}]
            )
            page = context.new_page()
            page.add_init_script(RECORDER + STATE_RECORDER)
            traffic = TusTraffic(page)
            page.goto(f"{base}/uploader/?tus={chunk}&stall={stall_ms}")
            assert page.get_attribute("[data-qs-uploader]", "data-stall-timeout") == "3000"
            page.set_input_files("input[type=file]", [str(source)])
            assert stall.wait(60), "no PATCH at 2 MiB"
            at_stall = _server_offset()
            # Nothing here releases the held PATCH: only the widget can end it.
            page.wait_for_function(
                f"""() => ["remote", "failed", "error"].includes(
                          document.querySelector('{item}')?.dataset.state)""",
                timeout=60_000,
            )
            state = page.locator(f"{item} .qs-state").inner_text()
            stored = page.locator(item).get_attribute("data-stored-name")
            states: list[str] = page.evaluate("window.qsStates")
            seen: list[dict[str, Any]] = page.evaluate("window.qsSeen")
            context.close()
    elapsed = time.monotonic() - started

    assert state == "remote", (states, seen)
    assert (stall.forwarded, stall.upstream_status) == (0, None)  # the server saw nothing of it
    assert at_stall == 2 * MiB
    exchanges = traffic.exchanges
    stalled = next(i for i, e in enumerate(exchanges) if e.offset == 2 * MiB)
    # The widget aborted it (net::ERR_ABORTED: the page's own abort, not a network error) ...
    assert exchanges[stalled].status is None, exchanges
    assert "ABORTED" in (exchanges[stalled].failure or ""), exchanges[stalled]
    assert "stalled, retrying in 0.5 s" in states, states
    # ... asked for the offset, and sent the rest from there. (Should a healthy request
    # stall too on a loaded machine, it is resumed the same way: the checks allow for it.)
    head, resumed = exchanges[stalled + 1 : stalled + 3]
    assert (head.method, head.status, head.answer) == ("HEAD", 200, at_stall)
    assert (resumed.method, resumed.offset, resumed.status) == ("PATCH", at_stall, 204)
    assert_each_patch_starts_where_the_server_is(exchanges)
    assert exchanges[-1].name == stored
    upload = TusUpload.objects.get()
    assert (upload.offset, upload.stored_name) == (size, stored)
    row = StoredFile.objects.get(name=stored)
    assert (row.state, row.size, row.owner) == (State.REMOTE, size, str(user.pk))
    assert s3_bytes(clean, stored) == data, "the S3 copy differs"
    with capsys.disabled():
        print(f"\ntus widget, stalled PATCH aborted after {stall_ms} ms ({elapsed:.1f}s)")


#: The part size the direct-mode test's web server signs (``QS_TEST_DIRECT_PART_SIZE``).
DIRECT_PART = 5 * MiB
WIDGET_JS = Path(queued_storage.__file__).parent / "static" / "queued_storage" / "uploader.js"


def crc32_b64(data: bytes) -> str:
    """What S3 (and the widget) calls a CRC32: base64 of its 4 big-endian bytes."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def direct_cors(origin: str) -> dict[str, Any]:
    """The bucket CORS rule a page of *origin* needs to PUT parts (docs/direct.md)."""
    return direct.cors_configuration([origin])


@pytest.fixture
def direct_site(
    s3_proxy: HttpFaultProxy, clean: Any
) -> Iterator[tuple[DjangoServer, HttpFaultProxy]]:
    """The test project on gunicorn signing 5 MiB parts, the bucket open to its origin (CORS,
    removed afterwards), and the S3 fault proxy the presigned URLs lead through, answering
    one request per connection (a part's dropped connection fails in the page, instead of
    being resent by Chromium: see :class:`HttpFaultProxy`)."""
    _need_chromium()
    env = {"QS_TEST_DIRECT_PART_SIZE": str(DIRECT_PART)}
    with django_server("gunicorn", "web-browser-direct", env) as server:
        clean.put_bucket_cors(Bucket=settings.BUCKET, CORSConfiguration=direct_cors(server.url))
        s3_proxy.keep_alive = False
        try:
            yield server, s3_proxy
        finally:
            s3_proxy.keep_alive = True
            clean.delete_bucket_cors(Bucket=settings.BUCKET)


def test_the_widget_in_direct_mode_resends_a_cut_part_resumes_after_a_reload_and_completes(
    direct_site: tuple[DjangoServer, HttpFaultProxy],
    clean: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server, proxy = direct_site
    size, cut_after = 24 * MiB, MiB
    source = tmp_path / "direct.bin"
    source.write_bytes(os.urandom(size))
    data = source.read_bytes()
    parts = {n + 1: data[i : i + DIRECT_PART] for n, i in enumerate(range(0, size, DIRECT_PART))}
    assert len(parts) == 5
    user, session = _signed_in("direct-browser-user")
    item = '.qs-file[data-file-name="direct.bin"]'

    def part(number: int) -> Any:
        return lambda h: h.get("x-amz-checksum-crc32") == crc32_b64(parts[number])

    started = time.monotonic()
    # (a) Part 2's first PUT reaches S3 with 1 MiB of its body, then its connection drops.
    # (b) Part 4's first PUT is held (S3 sees nothing of it) while the page reloads.
    cut = proxy.interrupt_next("PUT", after_bytes=cut_after, when=part(2))
    hold = proxy.interrupt_next("PUT", when=part(4))
    with browser_page() as browser:
        context = browser.new_context()
        context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": server.url}]
        )
        page = context.new_page()
        page.add_init_script(RECORDER + STATE_RECORDER)
        page.goto(f"{server.url}/uploader/?direct=1")
        widget = page.locator("[data-qs-uploader]")
        attributes = [widget.get_attribute(a) for a in ("data-mode", "data-direct-url")]
        page.set_input_files("input[type=file]", [str(source)])
        assert cut.wait(60), "no PUT of part 2"
        cut.release()
        assert hold.wait(60), "no PUT of part 4"
        first_states: list[str] = page.evaluate("window.qsStates")
        remembered_before = page.evaluate("Object.entries(localStorage)")
        page.reload()
        hold.release()
        page.set_input_files("input[type=file]", [str(source)])
        page.wait_for_function(
            f"""() => ["remote", "failed", "error"].includes(
                      document.querySelector('{item}')?.dataset.state)""",
            timeout=60_000,
        )
        state = page.locator(f"{item} .qs-state").inner_text()
        shown = page.locator(f"{item} .qs-upload-percent").inner_text()
        stored = page.locator(item).get_attribute("data-stored-name")
        resumed_from = page.locator(item).get_attribute("data-resumed-from")
        href = page.locator(f"{item} .qs-link").get_attribute("href")
        remembered_after = page.evaluate("Object.entries(localStorage)")
        seen: list[dict[str, Any]] = page.evaluate("window.qsSeen")
        context.close()
    elapsed = time.monotonic() - started

    assert (state, shown, stored) == ("remote", "100 %", "direct.bin"), seen
    assert attributes == ["direct", "/uploads/direct/"]
    # Each PUT carried exactly the signed headers: no Content-Type, no other x-amz-* header.
    headers = {k.lower(): v for k, v in cut.headers.items()}
    assert {k: v for k, v in headers.items() if k.startswith("x-amz-")} == {
        "x-amz-checksum-crc32": crc32_b64(parts[2]),
        "x-amz-sdk-checksum-algorithm": "CRC32",
    }
    assert "content-type" not in headers and "x-csrftoken" not in headers, headers
    assert headers["content-length"] == str(DIRECT_PART)
    # (a) S3 had 1 MiB of part 2 when its connection dropped; the widget sent it again.
    assert (cut.forwarded, cut.error) == (cut_after, None)
    assert "retrying in 0.5 s" in first_states, first_states
    # (b) Before the reload the upload was remembered under the file's name, size and date;
    # after it, the widget asked which parts S3 held (1 to 3) and sent only 4 and 5.
    [(key, upload_url)] = remembered_before
    assert key.startswith("queued-storage:direct:") and f":direct.bin:{size}:" in key, key
    assert upload_url == f"{server.url}/uploads/direct/upload/direct.bin"
    assert resumed_from == str(3 * DIRECT_PART)
    puts = [int(parse_qs(r.query)["partNumber"][0]) for r in proxy.requests if r.method == "PUT"]
    assert puts == [1, 2, 2, 3, 4, 4, 5], puts
    assert (hold.forwarded, hold.upstream_status) == (0, None)
    # Completed: the status shown is the site's answer; the upload is forgotten.
    assert remembered_after == []
    s3 = settings.S3_ENDPOINT.rstrip("/") + f"/{settings.BUCKET}/"
    assert href is not None and href.startswith(s3 + "direct.bin?"), href
    assert seen == [{"file": "direct.bin", "state": "remote", "url": href}]
    assert s3_bytes(clean, stored) == data, "the S3 copy differs"
    assert open_uploads(clean) == []
    row = StoredFile.objects.get(name=stored)
    assert (row.state, row.size, row.owner) == (State.REMOTE, size, str(user.pk))
    assert (row.checksum_algorithm, row.local_exists) == ("s3-composite-crc32", False)
    assert not [p for p in Path(settings.STAGING_ROOT).rglob("*") if p.is_file()]
    with capsys.disabled():
        print(f"\ndirect widget, {size} bytes in {len(puts)} PUTs ({elapsed:.1f}s)")


def test_the_widgets_crc32_is_zlibs(tmp_path: Path) -> None:
    """``QueuedStorageUploader.crc32(blob)``, what direct mode declares for each part, on a page
    with nothing but the script: the empty input, the CRC-32 check string, every byte value,
    and a few MiB of random bytes."""
    _need_chromium()
    inputs = [b"", b"a", b"123456789", bytes(range(256)) * 3, os.urandom(3 * MiB + 7)]
    with browser_page() as browser:
        page = browser.new_page()
        page.set_content("<!doctype html><title>crc32</title>")
        page.add_script_tag(path=str(WIDGET_JS))
        computed = page.evaluate(
            """(inputs) => Promise.all(inputs.map((encoded) => {
                 const text = atob(encoded);
                 const bytes = Uint8Array.from(text, (c) => c.charCodeAt(0));
                 return QueuedStorageUploader.crc32(new Blob([bytes]));
               }))""",
            [base64.b64encode(x).decode() for x in inputs],
        )
    assert computed == [crc32_b64(x) for x in inputs]
    assert computed[2] == "y/Q5Jg=="  # 0xCBF43926, the CRC-32 check value


def test_a_form_with_a_direct_file_field_posts_the_name_the_widget_uploaded(
    direct_site: tuple[DjangoServer, HttpFaultProxy], clean: Any, tmp_path: Path
) -> None:
    """A project's own ``ModelForm`` with ``DirectFileField`` (``tests/views.py``): the widget
    sends the file straight to S3, writes the reserved name into the field's hidden input,
    and the form posted with it validates as the user's finished upload and saves the
    document, which reads the bytes from S3."""
    server, _proxy = direct_site
    data = os.urandom(DIRECT_PART + 4321)  # two parts
    source = tmp_path / "form-direct.bin"
    source.write_bytes(data)
    _user, session = _signed_in("direct-form-user")
    with browser_page() as browser:
        context = browser.new_context()
        context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": session, "url": server.url}]
        )
        page = context.new_page()
        page.goto(f"{server.url}/direct-form/")
        hidden = page.locator("input[type=hidden][data-qs-name]")
        assert hidden.get_attribute("name") == "file" and hidden.input_value() == ""
        page.fill("input[name=title]", "through a form")
        page.set_input_files("input.qs-input", [str(source)])
        page.wait_for_function(
            "document.querySelector('input[data-qs-name]').value !== ''", timeout=60_000
        )
        name = hidden.input_value()
        status, body = page.evaluate(
            """async () => {
                 const form = document.querySelector("form");
                 const answer = await fetch(location.href, {method: "POST",
                   body: new FormData(form), credentials: "same-origin"});
                 return [answer.status, await answer.json()];
               }"""
        )
    assert status == 201, body
    assert body["name"] == name and name.endswith("form-direct.bin")
    row = StoredFile.get_row("default", name)
    assert row is not None and row.state == State.REMOTE and not row.local_exists
    document = Document.objects.get(pk=body["id"])
    assert document.title == "through a form"
    with document.file.open("rb") as served:
        assert served.read() == data
    assert s3_bytes(clean, name) == data

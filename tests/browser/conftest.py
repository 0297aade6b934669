"""A real browser on a web page that sends with Segment's analytics.js to the local stack's collector.

The page is served from its own origin (http://localhost:<port>), so every request to the collector
(http://127.0.0.1:<api port>/v1/) is cross-origin and goes through the browser's CORS checks, preflights
included. Chromium is Debian's (/usr/bin/chromium); analytics.js is the npm package's browser bundle.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    Response,
    sync_playwright,
)

from tests.e2e.conftest import ROOT, Running, free_port, started

CHROMIUM = Path("/usr/bin/chromium")
BUNDLES = ROOT / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
BUNDLE = BUNDLES / "index.js"  # the UMD build: defines window.AnalyticsNext

PAGE = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Shop</title>
%(snippet)s
</head>
<body><h1>Shop</h1></body>
</html>
"""


def readme_snippet(key: str, host: str) -> str:
    """The page snippet README.md documents ("Sending events"), up to its load call, for this stack: the
    local source's key, the stack's host, and plain HTTP."""
    found = re.search(r"^```html\n(.*?)^```", (ROOT / "README.md").read_text(), re.MULTILINE | re.DOTALL)
    assert found, "README.md has no ```html block (the analytics.js page snippet)"
    lines = found.group(1).splitlines()
    end = next((number for number, line in enumerate(lines) if line.rstrip().endswith("});")), None)
    assert end is not None and "AnalyticsBrowser.load(" in found.group(1), "README.md's snippet has no load call"
    snippet = "\n".join([*lines[:end + 1], "</script>"])
    for placeholder in ("<write key>", "<host>", 'protocol: "https"'):
        assert placeholder in snippet, f"README.md's snippet has no {placeholder}"
    return (snippet.replace("<write key>", key).replace("<host>", host)
            .replace('protocol: "https"', 'protocol: "http"'))


@pytest.fixture(scope="module")
def installed() -> None:
    """Chromium and the analytics.js bundle are there; a test fails (never skips) without them."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is missing: {CHROMIUM}; install Debian's (`apt-get update && apt-get install -y "
                    "chromium`), as .ci/run does")
    if not BUNDLE.is_file():
        pytest.fail(f"analytics.js is missing: {BUNDLE} (the npm devDependency @segment/analytics-next); "
                    "run `npm install --no-audit --no-fund` (or `make test`, which does)")


@pytest.fixture(scope="module")
def stack(installed: None) -> Iterator[Running]:
    with started("--clock", "wall", name="browser") as running:
        yield running


@dataclass
class Site:
    origin: str  # http://localhost:<port>
    server: ThreadingHTTPServer


@pytest.fixture(scope="module")
def site(stack: Running) -> Iterator[Site]:
    """The shop's page and the analytics.js bundle, served on a port (and origin) of their own."""
    snippet = readme_snippet(stack.health["collector"]["write_key"], urlsplit(stack.api).netloc)
    page = (PAGE % {"snippet": snippet}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            name = path.removeprefix("/analytics-next/bundles/")
            if path == "/":
                body, kind = page, "text/html; charset=utf-8"
            elif name != path and "/" not in name and (BUNDLES / name).is_file():
                body, kind = (BUNDLES / name).read_bytes(), "application/javascript"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, name="site", daemon=True)
    thread.start()
    try:
        yield Site(f"http://localhost:{server.server_address[1]}", server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(installed: None, playwright: Playwright) -> Iterator[Browser]:
    # No request interception (page.route): with it, Playwright answers every CORS preflight itself, so the
    # collector's own answer would never be tested. Any host but the two local ones fails to resolve instead,
    # and every request is recorded (Watched.requests), so an attempt to reach one is seen too.
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"])
    try:
        yield launched
    finally:
        launched.close()


@dataclass
class Watched:
    """A page and what it did: every request, the collector's responses, the preflights the browser sent,
    failed requests and console messages."""

    page: Page
    context: BrowserContext
    requests: list[Request] = field(default_factory=list)
    collector: list[Response] = field(default_factory=list)
    preflights: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: list[Request] = field(default_factory=list)
    console: list[ConsoleMessage] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)

    def summary(self) -> str:
        """What the page did, for a failure's message."""
        return (f"collector answers {[(r.request.method, r.url, r.status) for r in self.collector]}, "
                f"preflights {list(self.preflights.values())}, failed {[(r.url, r.failure) for r in self.failed]}, "
                f"console {[(m.type, m.text) for m in self.console]}, page errors {self.errors}")

    def foreign(self, *allowed: str) -> list[str]:
        """Requests to any host but ``allowed`` (host:port), as URLs."""
        return [request.url for request in self.requests
                if urlsplit(request.url).scheme != "data" and urlsplit(request.url).netloc not in allowed]


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context()
    page = context.new_page()
    seen = Watched(page, context)
    # Handlers are functions of their own: Playwright cannot wrap a builtin such as list.append.
    context.on("request", lambda request: seen.requests.append(request))
    context.on("requestfailed", lambda request: seen.failed.append(request))
    page.on("response", lambda response: seen.collector.append(response) if "/v1/" in response.url else None)
    page.on("console", lambda message: seen.console.append(message))
    page.on("pageerror", lambda error: seen.errors.append(error))
    # CORS preflights are not Playwright requests; the DevTools protocol reports them, initiated by "preflight".
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")

    def sent(event: dict[str, Any]) -> None:
        if event.get("initiator", {}).get("type") == "preflight":
            seen.preflights[event["requestId"]] = {"url": event["request"]["url"],
                                                   "method": event["request"]["method"]}

    def answered(event: dict[str, Any]) -> None:
        if event["requestId"] in seen.preflights:
            seen.preflights[event["requestId"]].update(status=event["response"]["status"],
                                                       headers={k.lower(): v for k, v in
                                                                event["response"]["headers"].items()})

    cdp.on("Network.requestWillBeSent", sent)
    cdp.on("Network.responseReceived", answered)
    try:
        yield seen
    finally:
        context.close()

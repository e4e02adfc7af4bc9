"""Fixtures that run the real app on a real uvicorn server (in a thread of the test process).

Use from tests/conftest.py with `pytest_plugins = ["tests.conftest_server"]`.

The server runs in-process so it shares the embedding model the core caches per process: the
model is loaded once per test session. The index is built by the core from a small corpus the
fixtures write into a temporary folder: a copy of corpus/ plus an article in a subfolder and an
article whose text carries HTML/script payloads.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_CORPUS = REPO / "corpus"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# An article in a subfolder: its doc_id contains a '/'.
SUBFOLDER_ID = "guides/glowberry-peel"
SUBFOLDER_ARTICLE = """Glowberry Peel Guide
The glowberry peel is a gentle fruit-acid peel used to brighten dull skin.
A glowberry peel session takes about twenty minutes and is repeated every four weeks.
Mild tingling during the glowberry peel is normal and fades within an hour.
"""

# An article whose text contains markup that must be shown, never run.
XSS_ID = "unsafe/zinnober-mask"
XSS_SCRIPT = "<script>window.__xss=1</script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'
XSS_ARTICLE = f"""Zinnober Clay Mask Notes
The Zinnober clay mask is left on the skin for twelve minutes and then rinsed off with cool water. Its label shows {XSS_SCRIPT} in small print.
The Zinnober clay mask box also prints {XSS_IMG} beside the usage instructions.
People with very dry skin should use the Zinnober clay mask no more than once a week.
"""
XSS_QUESTION = "How long is the Zinnober clay mask left on the skin?"

# A file outside the corpus folder that no document id may reach.
SECRET_TEXT = "TOP-SECRET-DO-NOT-SERVE"


def free_socket() -> socket.socket:
    """A listening socket on a free port of 127.0.0.1 (handed to uvicorn: no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def run_server(app, ready_path: str = "/health", timeout: float = 120.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread; yield its base URL once `ready_path` answers."""
    import uvicorn

    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name=f"uvicorn-{port}")
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not thread.is_alive():
                raise RuntimeError("the test server stopped while starting")
            if server.started:
                try:
                    httpx.get(base + ready_path, timeout=5.0)
                    break
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not answer {ready_path} within {timeout:.0f}s")
            time.sleep(0.05)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@dataclass
class LiveServer:
    url: str
    corpus_dir: Path
    index_dir: Path
    assistant: object  # assistant.Assistant

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60.0, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60.0, **kw)


def write_test_corpus(root: Path) -> Path:
    """corpus/ copied, plus a subfolder article and an article with script payloads."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for f in sorted(REAL_CORPUS.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copy(f, corpus / f.name)
    (corpus / "guides").mkdir()
    (corpus / f"{SUBFOLDER_ID}.txt").write_text(SUBFOLDER_ARTICLE, encoding="utf-8")
    (corpus / "unsafe").mkdir()
    (corpus / f"{XSS_ID}.txt").write_text(XSS_ARTICLE, encoding="utf-8")
    (root / "secret.txt").write_text(SECRET_TEXT, encoding="utf-8")
    return corpus


@pytest.fixture(scope="session")
def built_assistant(tmp_path_factory):
    """The real Assistant over the test corpus, with an index the core built."""
    from assistant import Assistant, Settings

    root = tmp_path_factory.mktemp("served")
    corpus = write_test_corpus(root)
    index = root / "index"
    settings = Settings(corpus_dir=corpus, index_dir=index)
    ast = Assistant.open(settings=settings, require_index=False)
    report = ast.reindex()
    assert report.articles >= 7, report
    return ast


@pytest.fixture(scope="session")
def live_server(built_assistant) -> Iterator[LiveServer]:
    """The app over the test corpus on a real uvicorn server."""
    from assistant.app import create_app

    ast = built_assistant
    with run_server(create_app(assistant=ast)) as url:
        yield LiveServer(url=url, corpus_dir=Path(ast.settings.corpus_dir),
                         index_dir=Path(ast.settings.index_dir), assistant=ast)


@pytest.fixture(scope="session")
def unindexed_server(tmp_path_factory) -> Iterator[LiveServer]:
    """The app over a corpus folder that has never been indexed (shares the loaded model)."""
    from assistant import Settings
    from assistant.app import create_app

    root = tmp_path_factory.mktemp("unindexed")
    (root / "corpus").mkdir()
    settings = Settings(corpus_dir=root / "corpus", index_dir=root / "index")
    app = create_app(settings=settings)
    with run_server(app) as url:
        yield LiveServer(url=url, corpus_dir=settings.corpus_dir, index_dir=settings.index_dir,
                         assistant=app.state.holder.get())


@pytest.fixture(scope="session")
def chromium_browser():
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (`make browser` or `apt-get install chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium_browser):
    """A fresh browser context (empty sessionStorage) and page, 1280x900."""
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.js_errors = errors  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()

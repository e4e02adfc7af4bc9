"""Screenshot of the chat page answering a real question, or of the admin page.

    python tests/screenshot.py OUT.png [--question "..."] [--width 1280 --height 900]
    python tests/screenshot.py --admin web/screenshot-admin.png

Starts the app on a free port of 127.0.0.1 with the default corpus and index (or
ASSISTANT_CORPUS_DIR / ASSISTANT_INDEX_DIR), asks the question in headless Chromium, waits for
the answer and saves a PNG of the page. The question log and feedback go to a temporary file,
never to the real one. `--admin`: with a temporary admin token, readers' questions (some the
articles do not answer) and a feedback verdict are sent first, then the admin page is signed
into and captured whole.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest_server import CHROMIUM, CHROMIUM_ARGS, run_server  # noqa: E402

DEFAULT_QUESTION = "Compare mesotherapy and microneedling"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="where to write the PNG")
    ap.add_argument("--question", default=DEFAULT_QUESTION)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--full-page", action="store_true", help="capture the whole page, not just the viewport")
    ap.add_argument("--admin", action="store_true", help="the admin page (signed in), captured whole")
    args = ap.parse_args(argv)

    if not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is not installed: run `make browser` (apt-get install chromium).", file=sys.stderr)
        return 2

    from assistant.app import create_app
    from assistant.config import Settings
    from assistant.owner_log import OwnerLog

    settings = Settings.from_env()
    if not settings.index_dir.is_absolute() and "ASSISTANT_INDEX_DIR" not in os.environ:
        settings = Settings.from_env(index_dir=REPO / settings.index_dir, corpus_dir=REPO / settings.corpus_dir)
    scratch = tempfile.TemporaryDirectory(prefix="screenshot-log-")
    token = secrets.token_hex(16)
    if args.admin:
        os.environ["ASSISTANT_ADMIN_TOKEN"] = token
    owner = OwnerLog(Path(scratch.name) / "library.sqlite3")
    app = create_app(settings=settings, owner_log=owner)

    from playwright.sync_api import sync_playwright

    with run_server(app) as url:
        health = app.state.holder.get().health()
        if not health.index_loaded:
            print(f"No index in {settings.index_dir}: build one with `assistant reindex` (or `make index`).",
                  file=sys.stderr)
            return 2
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": args.width, "height": args.height},
                                        device_scale_factor=1)
                if args.admin:
                    admin_shot(page, url, token, owner, args.out)
                    print(f"wrote {args.out}")
                    return 0
                page.goto(url + "/")
                page.fill("#question", args.question)
                page.press("#question", "Enter")
                page.wait_for_selector(".turn[data-status='done'], .turn[data-status='error']", timeout=120_000)
                page.wait_for_timeout(600)  # let the smooth scroll settle
                page.evaluate("window.scrollTo(0, 0)")
                page.locator("#question").blur()
                page.wait_for_timeout(200)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=args.full_page)
            finally:
                browser.close()
    print(f"wrote {args.out}")
    return 0


READER_QUESTIONS = [
    "What is the capital of France?", "Which city is the capital of France?",
    "How much does PRP cost in London?", "What is the price of a PRP session in London?",
    "Is laser hair removal safe?",
]


def admin_shot(page, url: str, token: str, owner, out: Path) -> None:
    """Readers' questions and one verdict first, so the page shows what it is for."""
    import httpx

    for q in READER_QUESTIONS:
        httpx.post(url + "/ask", json={"question": q}, timeout=60)
    res = httpx.post(url + "/ask", json={"question": "What does platelet-rich plasma contain?"}, timeout=60).json()
    if res["answers"]:
        a = res["answers"][0]
        h = a["highlight"][0] if a["highlight"] else {"start": 0, "end": 0}
        httpx.post(url + "/feedback", timeout=30, json={
            "question": res["question"], "doc_id": a["source"]["doc_id"], "start": a["source"]["start"],
            "end": a["source"]["end"], "highlight": a["text"][h["start"]:h["end"]], "helpful": True})
    owner.flush(10)
    page.goto(url + "/admin")
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_selector("#articles-table")
    page.wait_for_timeout(300)
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)


if __name__ == "__main__":
    sys.exit(main())

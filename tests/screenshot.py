"""Screenshot of the chat page answering a real question.

    python tests/screenshot.py OUT.png [--question "..."] [--width 1280 --height 900]

Starts the app on a free port of 127.0.0.1 with the default corpus and index (or
ASSISTANT_CORPUS_DIR / ASSISTANT_INDEX_DIR), asks the question in headless Chromium, waits for
the answer and saves a PNG of the page.
"""
from __future__ import annotations

import argparse
import os
import sys
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
    args = ap.parse_args(argv)

    if not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is not installed: run `make browser` (apt-get install chromium).", file=sys.stderr)
        return 2

    from assistant.app import create_app
    from assistant.config import Settings

    settings = Settings.from_env()
    if not settings.index_dir.is_absolute() and "ASSISTANT_INDEX_DIR" not in os.environ:
        settings = Settings.from_env(index_dir=REPO / settings.index_dir, corpus_dir=REPO / settings.corpus_dir)
    app = create_app(settings=settings)

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


if __name__ == "__main__":
    sys.exit(main())

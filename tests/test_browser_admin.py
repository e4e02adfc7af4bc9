"""The admin page and feedback in Debian's headless Chromium (Playwright): signing in, uploading
an article by drag and drop and asking about it in the chat page, deleting it, reindexing with
live progress, feedback given on an answer card and seen on the admin page, the questions
nobody answered, keyboard use and phone width. Real server, real index, real model."""
from __future__ import annotations

import json
import os
import re

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest_server import CHROMIUM, run_server
from tests.test_reindex import (  # noqa: F401  (fixtures)
    NEW_ID,
    NEW_V1,
    OLD_FACT,
    QUESTION,
    base_build,
    embedder,
    open_assistant,
    workspace,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (make browser)"),
]

TOKEN = "browser-admin-token-0123456789abcdef"
ORRAVINE = """Orravine Scalp Mist Notes
By Liis Tamm
Published: 2 February 2024
The Orravine scalp mist is sprayed on a dry scalp every morning and left on.
One bottle of Orravine scalp mist lasts about forty days with daily use.
"""
ORRAVINE_Q = "How long does a bottle of Orravine scalp mist last?"
OFF_TOPIC = ["What is the capital of France?", "Which city is the capital of France?", "Who painted the Mona Lisa?"]


@pytest.fixture
def site(workspace, embedder, monkeypatch, tmp_path):
    from assistant.app import create_app
    from assistant.owner_log import OwnerLog

    monkeypatch.setenv("ASSISTANT_ADMIN_TOKEN", TOKEN)
    owner = OwnerLog(tmp_path / "log.sqlite3")
    app = create_app(assistant=open_assistant(workspace, embedder), owner_log=owner)
    with run_server(app) as url:
        yield type("Site", (), {"url": url, "settings": workspace, "owner": owner})()


def sign_in(page, url: str) -> None:
    page.goto(url + "/admin")
    expect(page.locator("#token")).to_be_focused()
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("Library admin")
    # admin.js is deferred: a key pressed before it runs would do nothing
    expect(page.locator("#admin-app")).to_have_attribute("data-ready", "true")


def chat_ask(page, question: str, n: int) -> None:
    page.fill("#question", question)
    page.press("#question", "Enter")
    page.wait_for_selector(f"#transcript > li:nth-child({n})[data-status='done']", timeout=60_000)


def test_sign_in_wrong_then_right_then_out(site, browser_page):
    page = browser_page
    page.goto(site.url + "/admin")
    page.fill("#token", "not-the-token")
    page.press("#token", "Enter")
    expect(page.locator("#signin-error")).to_contain_text("not the admin token")
    assert page.locator("#token").get_attribute("aria-invalid") == "true"
    sign_in(page, site.url)
    cookie = next(c for c in page.context.cookies() if c["name"] == "assistant_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the session
    expect(page.locator("#articles-table tbody tr")).to_have_count(3)
    expect(page.locator("#health")).to_contain_text("serving")
    page.click("#sign-out")
    expect(page.locator("#token")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "assistant_admin"]
    assert page.js_errors == []


def test_upload_by_drag_and_drop_ask_then_delete(site, browser_page):
    page = browser_page
    sign_in(page, site.url)
    drop = page.evaluate_handle("""([a, b]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([a], 'orravine.txt', {type: 'text/plain'}));
        dt.items.add(new File([b], 'velmoria.md', {type: 'text/markdown'}));
        return dt; }""", [ORRAVINE, NEW_V1])
    page.dispatch_event("#upload-form", "dragenter", {"dataTransfer": drop})
    page.dispatch_event("#upload-form", "drop", {"dataTransfer": drop})
    expect(page.locator("#chosen")).to_contain_text("2 files: orravine.txt, velmoria.md")
    page.click("#upload-button")
    expect(page.locator("#flash")).to_contain_text("Indexed: Orravine Scalp Mist Notes (added)", timeout=90_000)
    expect(page.locator("#flash")).to_contain_text("Velmoria Cryo-Peel Guide (added)")
    expect(page.locator('tr[data-doc-id="velmoria"]')).to_have_count(1)
    row = page.locator('tr[data-doc-id="orravine"]')
    expect(row).to_contain_text("Liis Tamm")
    expect(row).to_contain_text("2 February 2024")

    chat = page.context.new_page()
    chat.goto(site.url + "/")
    chat_ask(chat, ORRAVINE_Q, 1)
    card = chat.locator(".card").first
    expect(card.locator("a.card__cite")).to_have_text("Orravine Scalp Mist Notes")
    expect(card.locator(".card__byline")).to_have_text(re.compile(r"Liis Tamm\s*·\s*2 February 2024"))
    assert "forty days" in card.locator("mark").first.inner_text()

    row.locator(".delete-button").click()
    expect(row.locator(".delete-button")).to_have_text("Confirm delete")
    row.locator(".delete-button").click()
    expect(page.locator("#flash")).to_contain_text("Deleted Orravine Scalp Mist Notes", timeout=60_000)
    expect(page.locator('tr[data-doc-id="orravine"]')).to_have_count(0)
    assert not (site.settings.corpus_dir / "orravine.txt").exists()
    chat_ask(chat, ORRAVINE_Q, 2)
    assert "Orravine" not in " ".join(chat.locator("#transcript > li:nth-child(2) a.card__cite").all_inner_texts())
    assert page.js_errors == []


def test_reindex_shows_live_progress(site, browser_page):
    page = browser_page
    # remember every progress line the page shows (in sessionStorage: the page reloads when done)
    page.add_init_script("""document.addEventListener('DOMContentLoaded', () => {
        const s = document.getElementById('reindex-status');
        if (!s) return;
        new MutationObserver(() => {
            const seen = JSON.parse(sessionStorage.getItem('seen-progress') || '[]');
            seen.push(s.textContent);
            sessionStorage.setItem('seen-progress', JSON.stringify(seen));
        }).observe(s, {childList: true, characterData: true, subtree: true});
    });""")
    sign_in(page, site.url)
    (site.settings.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    seen = []
    page.on("response", lambda r: seen.append(r) if r.url.endswith("/admin/reindex") else None)
    page.focus("#reindex-button")  # by keyboard
    page.keyboard.press("Enter")
    expect(page.locator("#flash")).to_contain_text("Reindexed: 4 articles", timeout=60_000)
    expect(page.locator("#flash")).to_contain_text("added 1")
    assert seen and seen[0].headers["content-type"].startswith("application/x-ndjson")
    shown = json.loads(page.evaluate("sessionStorage.getItem('seen-progress')") or "[]")
    assert any(re.search(r"4 of 4 articles read", t) for t in shown), shown
    assert any(re.search(r"\d+ of \d+ new passages embedded", t) for t in shown), shown
    expect(page.locator(f'tr[data-doc-id="{NEW_ID}"]')).to_have_count(1)


def test_feedback_on_an_answer_is_seen_on_the_admin_page_and_can_be_undone(site, browser_page):
    page = browser_page
    page.goto(site.url + "/")
    chat_ask(page, QUESTION.replace("Velmoria cryo-peel", "Lumen sauna"), 1)
    card = page.locator(".card").first
    helpful = card.locator(".feedback-button[data-helpful='true']")
    # keyboard: Tab reaches the button; Enter sends it
    page.focus("#main")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('feedback-button')"):
            break
    else:
        pytest.fail("Tab never reached a feedback button")
    with page.expect_response(lambda r: r.url.endswith("/feedback") and r.request.method == "POST") as resp:
        page.keyboard.press("Enter")
    assert resp.value.status == 201
    sent = resp.value.request.post_data_json
    assert sent["helpful"] is True and sent["doc_id"] == "lumen-sauna" and "thirty minutes" in sent["highlight"]
    expect(helpful).to_have_attribute("aria-pressed", "true")
    expect(card.locator(".feedback-undo")).to_be_visible()

    admin = page.context.new_page()
    admin_errors: list[str] = []
    admin.on("pageerror", lambda e: admin_errors.append(str(e)))
    sign_in(admin, site.url)
    item = admin.locator("#feedback-list li").first
    expect(item).to_contain_text("Helpful")
    expect(item).to_contain_text("Lumen sauna session")
    expect(item).to_contain_text("thirty minutes")

    # change of mind, then undo: the admin page follows
    with page.expect_response(lambda r: r.url.endswith("/feedback") and r.request.method == "POST"):
        card.locator(".feedback-button[data-helpful='false']").click()
    expect(card.locator(".feedback-button[data-helpful='false']")).to_have_attribute("aria-pressed", "true")
    expect(helpful).to_have_attribute("aria-pressed", "false")
    admin.reload()
    expect(admin.locator("#feedback-list li")).to_have_count(1)
    expect(admin.locator("#feedback-list li").first).to_contain_text("Not helpful")
    page.reload()  # the verdict survives a reload of the chat page, and so does undo
    card = page.locator(".card").first
    expect(card.locator(".feedback-button[data-helpful='false']")).to_have_attribute("aria-pressed", "true")
    with page.expect_response(lambda r: "/feedback/" in r.url and r.request.method == "DELETE"):
        card.locator(".feedback-undo").click()
    expect(card.locator(".feedback-button[aria-pressed='true']")).to_have_count(0)
    admin.reload()
    expect(admin.locator("#feedback-list li")).to_have_count(0)
    assert page.js_errors == [] and admin_errors == []


def test_unanswered_questions_list_after_off_topic_questions(site, browser_page):
    page = browser_page
    page.goto(site.url + "/")
    for i, q in enumerate(OFF_TOPIC, 1):
        chat_ask(page, q, i)
        expect(page.locator(f"#transcript > li:nth-child({i}) .abstain")).to_be_visible()
    assert site.owner.flush(10)
    sign_in(page, site.url)
    groups = page.locator("#groups > li")
    expect(groups).to_have_count(2)
    expect(groups.nth(0).locator(".group__count")).to_have_text("2×")
    expect(groups.nth(0)).to_contain_text("capital of France")
    expect(groups.nth(1).locator(".group__count")).to_have_text("1×")
    expect(groups.nth(1)).to_contain_text("Mona Lisa")
    with page.expect_response(lambda r: r.url.endswith("/admin/questions/mark")) as resp:
        groups.nth(1).locator(".mark-button").click()
    assert resp.value.status == 200
    expect(groups.nth(1).locator(".mark-button")).to_have_attribute("aria-pressed", "true")
    page.reload()
    expect(page.locator("#groups > li").nth(1).locator(".mark-button")).to_have_attribute("aria-pressed", "true")


def test_admin_page_at_phone_width_and_without_a_token(site, chromium_browser, monkeypatch):
    context = chromium_browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        sign_in(page, site.url)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        for sel in ("#reindex-button", "#choose-files", "#upload-button", "#add-url-button", ".delete-button"):
            assert page.locator(sel).first.is_visible(), sel
        monkeypatch.delenv("ASSISTANT_ADMIN_TOKEN")
        page.goto(site.url + "/admin")
        expect(page.locator("h1")).to_have_text("Admin is not enabled")
        expect(page.locator("main")).to_contain_text("ASSISTANT_ADMIN_TOKEN")
        assert page.locator("main form, main input").count() == 0
    finally:
        context.close()
    # and nothing else works either
    assert httpx.post(site.url + "/reindex", timeout=30).status_code == 403

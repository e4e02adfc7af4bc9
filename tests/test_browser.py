"""The chat page and the article view in Debian's headless Chromium (Playwright, sync API).

Real server, real Assistant, real index (fixtures in tests/conftest_server.py). Skipped only
when /usr/bin/chromium is not installed.
"""
from __future__ import annotations

import json
import os
import re

import pytest
from playwright.sync_api import expect

from tests.conftest_server import CHROMIUM, XSS_ID, XSS_IMG, XSS_QUESTION, XSS_SCRIPT

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (make browser)"),
]

QUESTION = "What is mesotherapy?"
FOLLOW_UP = "How long does recovery take?"


def ask(page, question: str, n: int) -> None:
    """Type a question, press Enter, wait for the n-th turn to finish."""
    page.fill("#question", question)
    page.press("#question", "Enter")
    page.wait_for_selector(f"#transcript > li:nth-child({n})[data-status='done']", timeout=60_000)


def stored_turns(page) -> list[dict]:
    raw = page.evaluate("sessionStorage.getItem('assistant.conversation.v1')")
    return json.loads(raw)["turns"] if raw else []


def test_ask_shows_a_cited_answer_with_a_highlighted_sentence(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    assert page.locator("#intro").is_visible()
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as req:
        ask(page, QUESTION, 1)
    assert req.value.post_data_json == {"question": QUESTION, "history": [], "top_k": 3}

    turn = page.locator("#transcript > li").first
    assert turn.locator(".bubble").inner_text().endswith(QUESTION)
    card = turn.locator(".card").first
    mark = card.locator("mark").first
    assert mark.is_visible() and len(mark.inner_text()) > 10
    cite = card.locator("a.card__cite")
    assert cite.inner_text().strip()
    assert re.match(r"^/documents/[^?]+\?start=\d+&end=\d+#passage$", cite.get_attribute("href"))
    assert page.locator("#intro").is_hidden()
    assert page.locator("#new-conversation").is_visible()
    # the answer is announced to screen readers
    expect(page.locator("#live")).to_have_text(re.compile(r"^Answer"))
    assert page.js_errors == []


def test_citation_opens_the_article_at_the_highlighted_passage(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    ask(page, QUESTION, 1)
    card = page.locator(".card").first
    passage_text = card.locator(".card__passage").inner_text()
    title = card.locator("a.card__cite").inner_text().strip()
    card.locator("a.card__cite").click()
    page.wait_for_url(re.compile(r"/documents/.+\?start=\d+&end=\d+#passage$"))
    assert page.locator("h1").inner_text().strip() == title
    mark = page.locator("mark#passage")
    assert mark.is_visible()
    marked = " ".join(page.locator("mark.passage").all_inner_texts())
    first_words = " ".join(passage_text.split()[:6])
    assert first_words in " ".join(marked.split())
    # scrolled into view
    box = mark.bounding_box()
    assert box is not None and 0 <= box["y"] < page.viewport_size["height"]
    # back to the conversation: it is still there
    page.click("text=Back to the conversation")
    page.wait_for_selector("#transcript > li[data-status='done']")
    assert page.locator("#transcript > li").count() == 1


def test_follow_up_sends_the_earlier_questions_as_history(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    ask(page, QUESTION, 1)
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as req:
        ask(page, FOLLOW_UP, 2)
    body = req.value.post_data_json
    assert body["question"] == FOLLOW_UP
    assert body["history"] == [QUESTION]
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as req:
        ask(page, "Is it painful?", 3)
    assert req.value.post_data_json["history"] == [QUESTION, FOLLOW_UP]


def test_history_is_capped_at_twenty_questions(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    turns = [{"id": f"t{i}", "question": f"Question {i}?", "status": "done",
              "response": {"question": f"Question {i}?", "resolved_question": f"Question {i}?",
                           "abstained": True, "message": "The articles do not answer this question.", "answers": []}}
             for i in range(25)]
    page.evaluate("t => sessionStorage.setItem('assistant.conversation.v1', JSON.stringify({version: 1, turns: t}))",
                  turns)
    page.reload()
    assert page.locator("#transcript > li").count() == 25
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as req:
        ask(page, QUESTION, 26)
    assert req.value.post_data_json["history"] == [f"Question {i}?" for i in range(5, 25)]


def test_conversation_survives_a_reload(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    ask(page, QUESTION, 1)
    ask(page, FOLLOW_UP, 2)
    cards_before = page.locator(".card").count()
    page.reload()
    page.wait_for_selector("#transcript > li:nth-child(2)[data-status='done']")
    bubbles = [re.sub(r"^You asked:\s*", "", t).strip() for t in page.locator(".bubble").all_inner_texts()]
    assert bubbles == [QUESTION, FOLLOW_UP]
    assert page.locator(".card").count() == cards_before
    assert page.locator("#intro").is_hidden()
    # and the next question still carries the history
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as req:
        ask(page, "Is it painful?", 3)
    assert req.value.post_data_json["history"] == [QUESTION, FOLLOW_UP]


def test_new_conversation_clears_it(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    ask(page, QUESTION, 1)
    assert stored_turns(page)
    page.click("#new-conversation")
    assert page.locator("#transcript > li").count() == 0
    assert page.locator("#intro").is_visible()
    assert page.locator("#new-conversation").is_hidden()
    assert stored_turns(page) == []
    page.reload()
    assert page.locator("#transcript > li").count() == 0
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as req:
        ask(page, FOLLOW_UP, 1)
    assert req.value.post_data_json["history"] == []


def test_clicking_an_example_question_sends_it(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    example = page.locator("button.example").first
    text = example.inner_text().strip()
    assert text
    with page.expect_request(lambda r: r.url.endswith("/ask") and r.method == "POST") as req:
        example.click()
    assert req.value.post_data_json["question"] == text
    page.wait_for_selector("#transcript > li[data-status='done']")
    assert page.locator(".bubble").first.inner_text().endswith(text)


def test_keyboard_only(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    # the question box has focus on load; Shift+Enter is a new line, Enter sends
    assert page.evaluate("document.activeElement.id") == "question"
    page.keyboard.type("What is")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("mesotherapy?")
    assert page.input_value("#question") == "What is\nmesotherapy?"
    page.keyboard.press("Enter")
    page.wait_for_selector("#transcript > li[data-status='done']")
    # Tab reaches the citation link and the focus is visible
    page.focus("#main")
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('card__cite')"):
            break
    else:
        pytest.fail("Tab never reached a citation link")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


def test_empty_question_is_not_sent(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    requests = []
    page.on("request", lambda r: requests.append(r) if r.url.endswith("/ask") else None)
    page.fill("#question", "   ")
    page.press("#question", "Enter")
    assert page.locator("#composer-error").inner_text() == "Type a question first."
    assert page.get_attribute("#question", "aria-invalid") == "true"
    assert requests == []


def test_abstention_reads_as_a_plain_message(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    ask(page, "What is the capital of France?", 1)
    turn = page.locator("#transcript > li").first
    assert turn.locator(".abstain").inner_text().strip()
    assert turn.locator(".card").count() == 0


def test_api_errors_are_shown(unindexed_server, browser_page):
    page = browser_page
    page.goto(unindexed_server.url + "/")
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    page.wait_for_selector("#transcript > li[data-status='error']")
    text = page.locator(".turn__error-text").inner_text()
    assert "reindex" in text  # the API's message, not a generic one
    assert page.locator(".turn__error button").inner_text() == "Ask again"
    expect(page.locator("#live")).to_have_text(re.compile(r"^Error"))


def test_loading_state_while_waiting(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")

    def slow(route):
        page.wait_for_timeout(800)
        route.continue_()

    page.route("**/ask", slow)
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    page.wait_for_selector(".thinking")
    assert page.locator("#send").is_disabled()
    assert page.get_attribute(".turn__answer", "aria-busy") == "true"
    page.wait_for_selector("#transcript > li[data-status='done']")
    assert page.locator("#send").is_enabled()


def test_comparison_answers_are_grouped_by_subject(live_server, browser_page):
    """The page's grouping of `about` answers (the API response is the real one, with `about` set
    on its answers here so the test does not depend on which questions the core reads as comparisons)."""
    page = browser_page
    page.goto(live_server.url + "/")

    def tag(route):
        resp = route.fetch()
        data = resp.json()
        for i, a in enumerate(data["answers"]):  # overwrite: the page's grouping is under test here
            a["about"] = "mesotherapy" if i % 2 == 0 else "microneedling"
        route.fulfill(response=resp, json=data)

    page.route("**/ask", tag)
    ask(page, "Compare mesotherapy and microneedling", 1)
    cols = page.locator(".compare__col")
    assert cols.count() == 2
    assert page.locator(".compare__heading").all_text_contents() == ["Mesotherapy", "Microneedling"]
    a, b = cols.nth(0).bounding_box(), cols.nth(1).bounding_box()
    assert abs(a["y"] - b["y"]) < 2 and b["x"] > a["x"] + a["width"] - 1  # side by side
    page.set_viewport_size({"width": 390, "height": 844})
    a, b = cols.nth(0).bounding_box(), cols.nth(1).bounding_box()
    assert b["y"] >= a["y"] + a["height"] - 1  # stacked


def test_phone_width(live_server, chromium_browser):
    context = chromium_browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        page.goto(live_server.url + "/")
        ask(page, QUESTION, 1)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert page.locator("#send").is_visible() and page.locator("#new-conversation").is_visible()
        page.locator("a.card__cite").first.click()
        page.wait_for_selector("mark#passage")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        context.close()


def test_script_payload_in_an_article_is_inert(live_server, browser_page):
    page = browser_page
    page.goto(live_server.url + "/")
    ask(page, XSS_QUESTION, 1)
    card = page.locator(".card").first
    text = card.locator(".card__passage").inner_text()
    assert XSS_SCRIPT in text and XSS_IMG in text
    assert card.locator("script, img").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__xss") == "undefined"

    # the article view, through the citation
    card.locator("a.card__cite").click()
    page.wait_for_url(re.compile(rf"/documents/{XSS_ID}\?"))
    body = page.locator(".article__body").inner_text()
    assert XSS_SCRIPT in body and XSS_IMG in body
    assert page.locator(".article__body script, .article__body img").count() == 0
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.js_errors == []

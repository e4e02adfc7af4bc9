"""The HTTP API against a real uvicorn server, the real Assistant, the real model and index.

Fixtures (live_server, unindexed_server) come from tests/conftest_server.py.
"""
from __future__ import annotations

import concurrent.futures
import fnmatch
import json
import socket
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest_server import (
    SECRET_TEXT,
    SUBFOLDER_ID,
    XSS_ID,
    XSS_IMG,
    XSS_QUESTION,
    XSS_SCRIPT,
    run_server,
)

QUESTION = "What is mesotherapy?"


def error_of(r: httpx.Response, status: int) -> dict:
    """Assert the one error shape and return its body."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"status", "message", "details"}, err
    assert err["status"] == status
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    assert isinstance(err["details"], list)
    for d in err["details"]:
        assert set(d) == {"field", "message"} and d["message"]
    return err


def raw_get(base: str, path: str) -> tuple[int, bytes]:
    """GET `path` byte for byte (no client-side normalisation of `..`)."""
    u = urlsplit(base)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: application/json\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def article_text(server, doc_id: str) -> str:
    r = server.get(f"/documents/{doc_id}.json")
    assert r.status_code == 200, r.text
    return r.json()["text"]


# --- health, documents -----------------------------------------------------------------------

def test_health_reports_the_index(live_server):
    r = live_server.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["index_loaded"] is True and h["status"] == "ok"
    assert h["articles"] == 7  # five from corpus/, a subfolder article, the script-payload article
    assert h["passages"] >= h["articles"]
    assert "MiniLM" in h["model"]
    assert h["built_at"]


def test_documents_lists_the_indexed_articles(live_server):
    r = live_server.get("/documents")
    assert r.status_code == 200
    docs = r.json()
    ids = {d["doc_id"] for d in docs}
    assert {"mesotherapy-vs-microneedling", SUBFOLDER_ID, XSS_ID} <= ids
    assert len(docs) == 7
    for d in docs:
        assert {"doc_id", "title", "path", "passages", "indexed_at", "url"} <= set(d)
        assert d["passages"] >= 1 and d["title"] and d["indexed_at"]
        assert d["url"] == f"/documents/{d['doc_id']}"
        assert live_server.get(d["url"], headers={"Accept": "text/html"}).status_code == 200


def test_document_json_by_suffix_and_by_accept(live_server):
    a = live_server.get("/documents/mesotherapy-vs-microneedling.json")
    b = live_server.get("/documents/mesotherapy-vs-microneedling", headers={"Accept": "application/json"})
    for r in (a, b):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
    view = a.json()
    assert view == b.json()
    assert view["doc_id"] == "mesotherapy-vs-microneedling"
    assert view["path"] == "mesotherapy-vs-microneedling.txt"
    assert "Mesotherapy is a minimally invasive procedure" in view["text"]
    assert view["passages"] and all(0 <= p["start"] < p["end"] <= len(view["text"]) for p in view["passages"])


def test_document_html_view_highlights_the_passage(live_server):
    view = live_server.get("/documents/mesotherapy-vs-microneedling.json").json()
    p = view["passages"][2]
    r = live_server.get(f"/documents/mesotherapy-vs-microneedling?start={p['start']}&end={p['end']}",
                        headers={"Accept": "text/html"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert f"<h1 id=\"article-title\" class=\"article__title\">{view['title']}</h1>" in html
    assert html.count('id="passage"') == 1
    assert '<mark class="passage" id="passage"' in html
    # the highlighted text is the passage: first line of it is inside the first mark
    first_line = view["text"][p["start"]:p["end"]].split("\n")[0]
    assert f'id="passage" tabindex="-1">{first_line}</mark>' in html
    # a paragraph per line of the clean text
    lines = [ln for ln in view["text"].split("\n") if ln.strip()]
    assert html.count('<p class="para') >= len(lines) - 1
    assert "content-security-policy" in r.headers


def test_document_html_without_or_with_bad_offsets(live_server):
    plain = live_server.get("/documents/mesotherapy-vs-microneedling", headers={"Accept": "text/html"})
    assert plain.status_code == 200 and "<mark" not in plain.text
    # offsets out of range: the article still shows, with a note instead of a highlight
    far = live_server.get("/documents/mesotherapy-vs-microneedling?start=999999&end=1000000",
                          headers={"Accept": "text/html"})
    assert far.status_code == 200 and "<mark" not in far.text and "not in this version" in far.text
    bad = live_server.get("/documents/mesotherapy-vs-microneedling?start=abc&end=3")
    err = error_of(bad, 422)
    assert "start" in err["message"]


def test_document_in_a_subfolder(live_server):
    r = live_server.get(f"/documents/{SUBFOLDER_ID}.json")
    assert r.status_code == 200
    assert r.json()["path"] == f"{SUBFOLDER_ID}.txt"
    html = live_server.get(f"/documents/{SUBFOLDER_ID}", headers={"Accept": "text/html"})
    assert html.status_code == 200 and "glowberry peel" in html.text


def test_unknown_document_is_404_json_for_clients_html_for_browsers(live_server):
    err = error_of(live_server.get("/documents/no-such-article"), 404)
    assert "no-such-article" in err["message"]
    error_of(live_server.get("/documents/no-such-article.json"), 404)
    page = live_server.get("/documents/no-such-article", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Not found" in page.text and "no-such-article" in page.text


@pytest.mark.parametrize("path", [
    "/documents/../secret",
    "/documents/../../etc/passwd",
    "/documents/%2e%2e/secret",
    "/documents/%2e%2e%2fsecret",
    "/documents/..%2F..%2Fetc%2Fpasswd",
    "/documents/guides/../../secret",
    "/documents/guides/%2e%2e/%2e%2e/secret.json",
    "/documents//etc/passwd",
    "/documents/%2Fetc%2Fpasswd",
    "/documents/..%5C..%5Csecret",
    "/documents/secret%00.json",
])
def test_no_document_id_reaches_outside_the_corpus(live_server, path):
    status, body = raw_get(live_server.url, path)
    assert status == 404, (path, status, body[:200])
    assert SECRET_TEXT.encode() not in body
    assert b"root:" not in body


# --- /ask ------------------------------------------------------------------------------------

def test_ask_answer_contract(live_server):
    r = live_server.post("/ask", json={"question": QUESTION})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["question"] == QUESTION
    assert isinstance(body["resolved_question"], str) and body["resolved_question"]
    assert body["abstained"] is False
    assert 1 <= len(body["answers"]) <= 3
    for a in body["answers"]:
        src = a["source"]
        text = article_text(live_server, src["doc_id"])
        # the passage is verbatim the article's clean text at the cited offsets
        assert a["text"] == text[src["start"]:src["end"]]
        assert a["highlight"], a
        for h in a["highlight"]:
            assert 0 <= h["start"] < h["end"] <= len(a["text"])
        assert isinstance(a["score"], float)
        assert src["title"] and src["path"].endswith(".txt")
        # the url opens the article view at that passage
        assert src["url"] == f"/documents/{src['doc_id']}?start={src['start']}&end={src['end']}#passage"
        page = live_server.get(src["url"].split("#")[0], headers={"Accept": "text/html"})
        assert page.status_code == 200 and 'id="passage"' in page.text
        for other in a["also_in"]:
            assert other["url"] and other["url"].startswith(f"/documents/{other['doc_id']}")
            assert live_server.get(other["url"].split("#")[0], headers={"Accept": "text/html"}).status_code == 200
    # the best answer talks about mesotherapy
    assert any("esotherapy" in a["text"] for a in body["answers"])


def test_ask_top_k_bounds_the_answers(live_server):
    one = live_server.post("/ask", json={"question": QUESTION, "top_k": 1}).json()
    assert len(one["answers"]) == 1
    many = live_server.post("/ask", json={"question": QUESTION, "top_k": 10}).json()
    assert 1 <= len(many["answers"]) <= 10


def test_ask_with_history(live_server):
    history = ["What is microneedling?"]
    r = live_server.post("/ask", json={"question": "How long does recovery take?", "history": history})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["question"] == "How long does recovery take?"
    assert isinstance(body["resolved_question"], str)
    for a in body["answers"]:
        assert a["source"]["url"].startswith("/documents/")


def test_ask_history_at_the_limit_is_accepted(live_server):
    r = live_server.post("/ask", json={"question": QUESTION, "history": [f"question {i}?" for i in range(20)]})
    assert r.status_code == 200, r.text


def test_ask_abstains_off_topic(live_server):
    r = live_server.post("/ask", json={"question": "What is the capital of France?"})
    assert r.status_code == 200
    body = r.json()
    assert body["abstained"] is True
    assert body["answers"] == []
    assert body["message"]


def test_ask_returns_script_payload_as_plain_text(live_server):
    body = live_server.post("/ask", json={"question": XSS_QUESTION}).json()
    assert not body["abstained"]
    top = body["answers"][0]
    assert top["source"]["doc_id"] == XSS_ID
    text = article_text(live_server, XSS_ID)
    assert XSS_SCRIPT in text and XSS_IMG in text
    html = live_server.get(f"/documents/{XSS_ID}", headers={"Accept": "text/html"}).text
    assert XSS_SCRIPT not in html and "<img src=x" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_concurrent_questions(live_server):
    questions = [QUESTION, "What is microneedling?", "How is PRP made?", "What are exosomes?"] * 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda q: live_server.post("/ask", json={"question": q}), questions))
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    assert [r.json()["question"] for r in results] == questions


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field, words", [
    ({}, "question", "required"),
    ({"history": ["What is PRP?"]}, "question", "required"),
    ({"question": ""}, "question", "empty"),
    ({"question": "   \n\t "}, "question", "empty"),
    ({"question": "x" * 1001}, "question", "limit"),
    ({"question": 42}, "question", "string"),
    ({"question": None}, "question", "string"),
    ({"question": ["What is PRP?"]}, "question", "string"),
    ({"question": QUESTION, "history": "What is PRP?"}, "history", "list"),
    ({"question": QUESTION, "history": [1, 2]}, "history.0", "string"),
    ({"question": QUESTION, "history": ["q?"] * 21}, "history", "20"),
    ({"question": QUESTION, "top_k": 0}, "top_k", "1 to 10"),
    ({"question": QUESTION, "top_k": 11}, "top_k", "1 to 10"),
    ({"question": QUESTION, "top_k": "3"}, "top_k", "1 to 10"),
    ({"question": QUESTION, "top_k": 2.5}, "top_k", "1 to 10"),
    ({"question": QUESTION, "top_k": True}, "top_k", "1 to 10"),
    ({"question": QUESTION, "topk": 3}, "topk", "Unknown field"),
])
def test_ask_rejects_bad_input_with_422(live_server, body, field, words):
    err = error_of(live_server.post("/ask", json=body), 422)
    assert words.lower() in err["message"].lower(), err
    assert field in [d["field"] for d in err["details"]], err


@pytest.mark.parametrize("raw", [b"[1, 2]", b"null", b'"What is PRP?"', b"42"])
def test_ask_rejects_a_body_that_is_not_an_object(live_server, raw):
    err = error_of(live_server.post("/ask", content=raw, headers={"Content-Type": "application/json"}), 422)
    assert "JSON object" in err["message"]


@pytest.mark.parametrize("raw", [b"{", b"{'question': 'x'}", b'{"question": "What is PRP?",}', b"\xff\xfe"])
def test_ask_rejects_invalid_json_with_400(live_server, raw):
    err = error_of(live_server.post("/ask", content=raw, headers={"Content-Type": "application/json"}), 400)
    assert "not valid JSON" in err["message"]


def test_ask_without_a_body(live_server):
    err = error_of(live_server.post("/ask"), 422)
    assert "JSON body" in err["message"]


def test_ask_with_a_body_that_is_not_json(live_server):
    err = error_of(live_server.post("/ask", content=b"question=What+is+PRP",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    assert "application/json" in err["message"]


def test_body_over_64_kib_by_content_length(live_server):
    body = json.dumps({"question": "x" * (70 * 1024)}).encode()
    err = error_of(live_server.post("/ask", content=body, headers={"Content-Type": "application/json"}), 413)
    assert "64 KiB" in err["message"]


def test_body_over_64_kib_streamed_without_content_length(live_server):
    def chunks():
        yield b'{"question": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(live_server.url + "/ask", content=chunks(), headers={"Content-Type": "application/json"},
                   timeout=30)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    err = error_of(r, 413)
    assert "64 KiB" in err["message"]


def test_streamed_body_under_the_limit_is_fine(live_server):
    def chunks():
        yield b'{"question": '
        yield json.dumps(QUESTION).encode()
        yield b"}"

    r = httpx.post(live_server.url + "/ask", content=chunks(), headers={"Content-Type": "application/json"},
                   timeout=60)
    assert r.status_code == 200, r.text


def test_wrong_method_and_unknown_route(live_server):
    err = error_of(live_server.get("/ask"), 405)
    assert "POST" in err["message"]
    error_of(live_server.post("/health"), 405)
    err = error_of(live_server.get("/no/such/route"), 404)
    assert "/no/such/route" in err["message"]


def test_error_shape_is_pinned(live_server):
    r = live_server.post("/ask", json={"question": ""})
    assert r.status_code == 422
    assert r.json() == {
        "error": {
            "status": 422,
            "message": "The question is empty: type a question about the articles.",
            "details": [
                {"field": "question", "message": "The question is empty: type a question about the articles."}
            ],
        }
    }


def test_without_an_index_ask_is_503_and_says_how_to_build_one(unindexed_server):
    err = error_of(unindexed_server.post("/ask", json={"question": QUESTION}), 503)
    assert "reindex" in err["message"]
    error_of(unindexed_server.get("/documents"), 503)
    h = unindexed_server.get("/health")
    assert h.status_code == 503
    assert h.json()["index_loaded"] is False
    # the chat page still opens and says what to do
    page = unindexed_server.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "reindex" in page.text


# --- pages, static files, OpenAPI ------------------------------------------------------------

def test_chat_page_and_static_files(live_server):
    r = live_server.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="ask-form"' in html and 'id="question"' in html and 'aria-live="polite"' in html
    assert "https://" not in html and "http://" not in html  # nothing from a CDN
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    for name, ctype in [("app.css", "text/css"), ("chat.js", "javascript"), ("article.js", "javascript")]:
        s = live_server.get(f"/static/{name}")
        assert s.status_code == 200 and ctype in s.headers["content-type"], name
        assert "https://" not in s.text


def test_a_wheel_ships_every_template_and_static_file():
    """pyproject installs web/ as assistant/web, so a wheel (not only this checkout) serves the page."""
    root = Path(__file__).resolve().parent.parent
    conf = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert conf["package-dir"]["assistant.web"] == "web"
    data = conf["package-data"]
    for sub, package in [("templates", "assistant.web.templates"), ("static", "assistant.web.static")]:
        files = [f.name for f in (root / "web" / sub).iterdir() if f.is_file()]
        assert files and package in conf["packages"]
        assert all(any(fnmatch.fnmatch(f, g) for g in data[package]) for f in files), (package, files)
    assert "examples.json" in data["assistant.web"]


def test_example_questions_come_from_a_config_file(built_assistant, tmp_path, monkeypatch):
    from assistant.app import create_app

    examples = tmp_path / "examples.json"
    examples.write_text(json.dumps({"examples": ["Is a glowberry peel <b>painful</b>?"]}), encoding="utf-8")
    monkeypatch.setenv("ASSISTANT_EXAMPLES_FILE", str(examples))
    with run_server(create_app(assistant=built_assistant)) as url:
        html = httpx.get(url + "/", timeout=30).text
    assert "Is a glowberry peel &lt;b&gt;painful&lt;/b&gt;?" in html
    assert "<b>painful</b>" not in html


def test_openapi_describes_every_route(live_server):
    spec = live_server.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) >= {"/", "/ask", "/documents", "/documents/{doc_id}", "/health"}
    ask = paths["/ask"]["post"]
    assert ask["summary"]
    assert ask["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/AskRequest")
    assert ask["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/AskResponse")
    for status in ("400", "413", "415", "422", "503"):
        assert ask["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    docs = paths["/documents/{doc_id}"]["get"]
    assert {"application/json", "text/html"} <= set(docs["responses"]["200"]["content"])
    assert docs["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert paths["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Health")
    for path, ops in paths.items():
        for method, op in ops.items():
            assert op.get("summary"), (method, path)
    schemas = spec["components"]["schemas"]
    assert schemas["AskRequest"]["properties"]["question"]["maxLength"] == 1000
    assert schemas["AskRequest"].get("examples")
    assert {"AskResponse", "Answer", "Source", "AlsoIn", "ErrorResponse", "ArticleView", "Health"} <= set(schemas)
    d = live_server.get("/docs")
    assert d.status_code == 200 and "swagger" in d.text.lower()


def test_docs_page_is_served_without_a_cdn(live_server):
    """Every asset of /docs comes from this server: no internet at run time."""
    import re

    import httpx

    r = httpx.get(live_server.url + "/docs")
    assert r.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    for a in assets:
        assert httpx.get(live_server.url + a).status_code == 200, a

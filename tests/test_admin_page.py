"""The admin page's server side on a real uvicorn: disabled without a token, sign-in with the
session cookie (its attributes, forgery, expiry by token change), CSRF, throttled wrong tokens,
sign-out, the dashboard, reindex with streamed progress, add by URL, marking questions."""
from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.conftest_server import run_server
from tests.test_reindex import (  # noqa: F401  (fixtures)
    NEW_ID,
    NEW_V1,
    OLD_FACT,
    PAGE_HTML,
    QUESTION,
    base_build,
    embedder,
    open_assistant,
    top_cites,
    web_server,
    workspace,
)

TOKEN = "page-admin-token-0123456789abcdef"
HTML = {"Accept": "text/html"}


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message", "details"}, body
    return body["error"]


@pytest.fixture
def site(workspace, embedder, monkeypatch, tmp_path):
    """A live server over a private corpus with the admin token set."""
    from assistant.app import create_app
    from assistant.owner_log import OwnerLog

    monkeypatch.setenv("ASSISTANT_ADMIN_TOKEN", TOKEN)
    owner = OwnerLog(tmp_path / "log.sqlite3")
    app = create_app(assistant=open_assistant(workspace, embedder), owner_log=owner)
    app.state.reindex_wait = 5.0
    with run_server(app) as url:
        yield type("Site", (), {"url": url, "settings": workspace, "owner": owner})()


def sign_in(url: str, token: str = TOKEN, **kw) -> httpx.Response:
    return httpx.post(url + "/admin/session", data={"token": token}, headers={"Accept": "text/html", **kw.pop("headers", {})},
                      follow_redirects=False, timeout=30, **kw)


def session(url: str) -> tuple[httpx.Client, str]:
    """A client holding the session cookie, and the page's CSRF token."""
    r = sign_in(url)
    assert r.status_code == 303 and r.headers["location"] == "/admin", r.text
    client = httpx.Client(base_url=url, timeout=120, cookies={"assistant_admin": r.cookies["assistant_admin"]})
    page = client.get("/admin", headers=HTML)
    assert page.status_code == 200
    m = re.search(r'data-csrf="([0-9a-f]{64})"', page.text)
    assert m, page.text[:500]
    return client, m.group(1)


def test_without_a_token_admin_says_how_to_enable_it_and_nothing_else(live_server, monkeypatch):
    monkeypatch.delenv("ASSISTANT_ADMIN_TOKEN", raising=False)
    r = live_server.get("/admin", headers=HTML)
    assert r.status_code == 403
    assert "ASSISTANT_ADMIN_TOKEN" in r.text and "openssl rand" in r.text
    assert "<form" not in r.text and "admin.js" not in r.text  # no sign-in, no actions
    r = httpx.post(live_server.url + "/admin/session", data={"token": "anything"}, timeout=30)
    assert "ASSISTANT_ADMIN_TOKEN" in error_of(r, 403)["message"]


def test_sign_in_sets_a_strict_httponly_session_cookie(site):
    r = httpx.get(site.url + "/admin", headers=HTML)
    assert r.status_code == 200 and 'name="token"' in r.text and "Articles" not in r.text
    r = sign_in(site.url)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("assistant_admin=")
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attrs and "secure" not in attrs
    assert "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie  # an HMAC of an expiry, never the token itself
    # behind a TLS-terminating proxy (uvicorn trusts X-Forwarded-Proto from 127.0.0.1): Secure
    r = sign_in(site.url, headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()

    client, csrf = session(site.url)
    page = client.get("/admin", headers=HTML).text
    for part in ("Index health", "Articles", "Questions nobody answered", "Readers’ feedback", "lumen-sauna"):
        assert part in page


def test_wrong_tokens_are_refused_then_slowed_down(site):
    r = sign_in(site.url, token="wrong")
    assert r.status_code == 401 and "not the admin token" in r.text and 'name="token"' in r.text
    assert "set-cookie" not in r.headers
    err = error_of(httpx.post(site.url + "/admin/session", data={"token": "wrong"}, timeout=30), 401)
    assert "not the admin token" in err["message"]
    for _ in range(3):
        assert sign_in(site.url, token="wrong").status_code == 401
    r = sign_in(site.url)  # five failures: even the right token waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and "Try again" in r.text
    assert "set-cookie" not in r.headers
    error_of(httpx.post(site.url + "/admin/session", data={"token": TOKEN}, timeout=30), 429)


def test_bad_sign_in_bodies(site):
    error_of(httpx.post(site.url + "/admin/session", json={"token": TOKEN}, timeout=30), 415)
    error_of(httpx.post(site.url + "/admin/session", data={"token": ""}, timeout=30), 422)
    error_of(httpx.post(site.url + "/admin/session", data={"token": "tøkén€"}, timeout=30), 401)
    r = sign_in(site.url, headers={"Origin": "https://evil.example"})  # login CSRF
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_the_cookie_needs_the_csrf_token_to_change_anything(site):
    client, csrf = session(site.url)
    error_of(client.post("/reindex"), 403)  # cookie alone: no
    error_of(client.post("/reindex", headers={"X-CSRF-Token": "0" * 64}), 403)
    error_of(client.post("/reindex", headers={"X-CSRF-Token": "é€".encode("utf-8")}), 403)  # never a 500
    error_of(client.post("/reindex", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}), 403)
    r = client.post("/reindex", headers={"X-CSRF-Token": csrf, "Origin": site.url})
    assert r.status_code == 200, r.text
    # a forged or tampered cookie is no session
    raw = {"Cookie": "assistant_admin=99999999999999999999.é".encode("utf-8"), "X-CSRF-Token": csrf}
    error_of(httpx.post(site.url + "/reindex", headers=raw), 401)  # never a 500
    for bad in ("9999999999.deadbeef", "1.x", "garbage"):
        c = httpx.Client(base_url=site.url, cookies={"assistant_admin": bad})
        assert 'name="token"' in c.get("/admin", headers=HTML).text
        error_of(c.post("/reindex", headers={"X-CSRF-Token": csrf}), 401)


def test_changing_the_token_signs_everyone_out(site, monkeypatch):
    client, csrf = session(site.url)
    monkeypatch.setenv("ASSISTANT_ADMIN_TOKEN", TOKEN + "-rotated")
    assert 'name="token"' in client.get("/admin", headers=HTML).text
    error_of(client.post("/reindex", headers={"X-CSRF-Token": csrf}), 401)


def test_sign_out_clears_the_cookie(site):
    client, csrf = session(site.url)
    r = client.post("/admin/logout", data={"csrf": "wrong"}, follow_redirects=False)
    error_of(r, 403)
    r = client.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert re.search(r'assistant_admin="?"?;', r.headers["set-cookie"]) and "max-age=0" in r.headers["set-cookie"].lower()


def test_reindex_streams_progress_then_the_report(site):
    client, csrf = session(site.url)
    (site.settings.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    with client.stream("POST", "/admin/reindex", headers={"X-CSRF-Token": csrf}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in r.iter_lines() if x.strip()]
    progress, final = lines[:-1], lines[-1]
    assert final["done"] is True and final["report"]["added"] == [NEW_ID], final
    phases = [p["phase"] for p in progress]
    assert "reading" in phases and "embedding" in phases, phases
    reading = [p for p in progress if p["phase"] == "reading"]
    assert reading[-1]["articles_done"] == reading[-1]["articles_total"] == 4
    emb = [p for p in progress if p["phase"] == "embedding"]
    assert emb[-1]["passages_done"] == emb[-1]["passages_total"] == final["report"]["embedded_passages"] > 0
    assert all(p["seconds_left"] is None or p["seconds_left"] >= 0 for p in progress)
    assert top_cites(httpx.post(site.url + "/ask", json={"question": QUESTION}, timeout=60).json(), NEW_ID, OLD_FACT)
    error_of(httpx.post(site.url + "/admin/reindex", timeout=30), 401)


AUTHORED_PAGE = PAGE_HTML.replace(
    "<title>", '<meta name="author" content="Mira Solberg">'
    '<meta property="article:published_time" content="2023-03-12T09:00:00Z">'
    '<meta property="og:site_name" content="Frostline Spa"><title>')


def test_add_a_web_page_from_the_admin_page(site):
    client, csrf = session(site.url)
    page = (200, "text/html; charset=utf-8", AUTHORED_PAGE.format(word="zandrelite", fact="17 minutes").encode())
    with web_server({"/velmoria.html": page, "/report.pdf": (200, "application/pdf", b"%PDF-1.4")}) as web:
        r = client.post("/documents/from-url", json={"url": web + "/velmoria.html"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201, r.text
        doc_id = r.json()["doc_id"]
        err = error_of(client.post("/documents/from-url", json={"url": web + "/report.pdf"},
                                   headers={"X-CSRF-Token": csrf}), 422)
        assert "not an HTML page" in err["message"]
        error_of(client.post("/documents/from-url", json={"url": web + "/missing.html"},
                             headers={"X-CSRF-Token": csrf}), 422)
    error_of(client.post("/documents/from-url", json={"url": "file:///etc/passwd"}, headers={"X-CSRF-Token": csrf}), 422)
    error_of(client.post("/documents/from-url", json={"url": 5}, headers={"X-CSRF-Token": csrf}), 422)
    error_of(client.post("/documents/from-url", json={"url": "https://x.org", "extra": 1}, headers={"X-CSRF-Token": csrf}), 422)
    docs = {d["doc_id"]: d for d in httpx.get(site.url + "/documents").json()}
    d = docs[doc_id]
    assert (d["author"], d["published"], d["site"]) == ("Mira Solberg", "2023-03-12", "Frostline Spa")
    assert d["original_url"] == web + "/velmoria.html"
    res = httpx.post(site.url + "/ask", json={"question": QUESTION}, timeout=60).json()
    assert res["answers"][0]["source"]["author"] == "Mira Solberg"
    assert "Mira Solberg" not in res["answers"][0]["text"]
    page = client.get("/admin", headers=HTML).text
    assert "Mira Solberg" in page and "12 March 2023" in page


def test_mark_questions_and_its_bad_input(site):
    client, csrf = session(site.url)
    for q in ("What is the capital of France?", "Which city is the capital of France?"):
        httpx.post(site.url + "/ask", json={"question": q}, timeout=60)
    assert site.owner.flush(10)
    group = site.owner.unanswered_groups()[0]
    h = {"X-CSRF-Token": csrf}
    r = client.post("/admin/questions/mark", json={"ids": group.ids, "unanswerable": True}, headers=h)
    assert r.status_code == 200 and r.json()["marked"] == 2
    assert site.owner.unanswered_groups()[0].marked_unanswerable
    assert 'aria-pressed="true"' in client.get("/admin", headers=HTML).text
    error_of(client.post("/admin/questions/mark", json={"ids": [], "unanswerable": True}, headers=h), 422)
    error_of(client.post("/admin/questions/mark", json={"ids": ["x"], "unanswerable": True}, headers=h), 422)
    error_of(client.post("/admin/questions/mark", json={"ids": [1]}, headers=h), 422)
    error_of(client.post("/admin/questions/mark", json={"ids": [1], "unanswerable": True}), 403)

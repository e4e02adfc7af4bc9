"""The admin API on a real uvicorn server: POST /reindex, POST /documents (upload),
DELETE /documents/{doc_id}; the token; bad uploads; the lock; questions during a reindex."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import pytest

from tests.conftest_server import run_server
from tests.test_reindex import (  # noqa: F401  (fixtures)
    NEW_FACT,
    NEW_ID,
    NEW_V1,
    NEW_V2,
    OLD_FACT,
    PDF_ID,
    PDF_PAGES,
    PDF_QUESTION,
    QUESTION,
    base_build,
    cited,
    embedder,
    http_ask,
    make_pdf,
    open_assistant,
    quoted,
    snapshot,
    top_cites,
    workspace,
)

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024


def error_of(r: httpx.Response, status: int) -> dict:
    """The one error shape, with this status."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message", "details"}, body
    assert body["error"]["status"] == status
    return body["error"]


@pytest.fixture
def admin(workspace, embedder, monkeypatch):
    """A live server over a private corpus, admin routes enabled."""
    from assistant.app import create_app

    monkeypatch.setenv("ASSISTANT_ADMIN_TOKEN", TOKEN)
    app = create_app(assistant=open_assistant(workspace, embedder))
    app.state.reindex_wait = 5.0
    with run_server(app) as url:
        yield type("Admin", (), {"url": url, "settings": workspace, "app": app})()


def upload(base: str, name: str, data: bytes, headers=AUTH, **params) -> httpx.Response:
    return httpx.post(base + "/documents", files={"file": (name, data)}, headers=headers, params=params, timeout=120)


def test_upload_replace_and_delete_an_article(admin):
    base, corpus = admin.url, admin.settings.corpus_dir
    assert not cited(http_ask(base), NEW_ID)

    r = upload(base, f"{NEW_ID}.txt", NEW_V1.encode())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["doc_id"] == NEW_ID and body["status"] == "added" and body["path"] == f"{NEW_ID}.txt"
    assert body["report"]["added"] == [NEW_ID] and body["url"] == f"/documents/{NEW_ID}"
    assert top_cites(http_ask(base), NEW_ID, OLD_FACT)  # answerable as soon as the upload returns
    assert httpx.get(base + body["url"] + ".json").json()["text"].startswith("Velmoria Cryo-Peel Guide")
    assert not [p for p in corpus.iterdir() if p.name.startswith(".")]  # no temp file left behind

    r = upload(base, f"{NEW_ID}.txt", NEW_V1.encode())  # the same file again
    assert r.status_code == 200 and r.json()["status"] == "unchanged", r.text

    before = snapshot(corpus)
    err = error_of(upload(base, f"{NEW_ID}.txt", NEW_V2.encode()), 409)  # never overwritten silently
    assert "replace=true" in err["message"]
    err = error_of(upload(base, f"{NEW_ID}.md", NEW_V2.encode()), 409)  # another file, same doc_id
    assert f"{NEW_ID}.txt" in err["message"]
    assert snapshot(corpus) == before

    r = upload(base, f"{NEW_ID}.txt", NEW_V2.encode(), replace="true")
    assert r.status_code == 201 and r.json()["status"] == "replaced", r.text
    assert r.json()["report"]["changed"] == [NEW_ID]
    resp = http_ask(base)
    assert top_cites(resp, NEW_ID, NEW_FACT) and not quoted(resp, OLD_FACT), resp

    r = httpx.delete(base + f"/documents/{NEW_ID}", headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["removed"] == [f"{NEW_ID}.txt"] and r.json()["report"]["removed"] == [NEW_ID]
    assert not (corpus / f"{NEW_ID}.txt").exists()
    for q in (QUESTION, "What is the Velmoria cryo-peel made with?"):
        assert not cited(http_ask(base, q), NEW_ID)
    error_of(httpx.get(base + f"/documents/{NEW_ID}.json"), 404)
    error_of(httpx.delete(base + f"/documents/{NEW_ID}", headers=AUTH), 404)
    error_of(httpx.delete(base + "/documents/guides/..%2F..%2Fsecret", headers=AUTH), 404)


def test_upload_a_pdf(admin):
    r = upload(admin.url, f"{PDF_ID}.pdf", make_pdf(PDF_PAGES, title="Orravine Scalp Mist"))
    assert r.status_code == 201, r.text
    assert r.json()["title"] == "Orravine Scalp Mist"
    assert top_cites(http_ask(admin.url, PDF_QUESTION), PDF_ID, "kelboria")


def test_post_reindex_reports_what_changed(admin):
    (admin.settings.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    (admin.settings.corpus_dir / "lumen-sauna.txt").unlink()
    r = httpx.post(admin.url + "/reindex", headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["added"] == [NEW_ID] and rep["removed"] == ["lumen-sauna"] and rep["unchanged"] == 2, rep
    assert top_cites(http_ask(admin.url), NEW_ID, OLD_FACT)
    r = httpx.post(admin.url + "/reindex", headers=AUTH, timeout=120)
    assert r.status_code == 200 and not (r.json()["added"] or r.json()["changed"] or r.json()["removed"])


def test_admin_routes_need_the_token(admin, monkeypatch):
    base, corpus = admin.url, admin.settings.corpus_dir
    (corpus / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    before = snapshot(corpus)
    calls = [
        lambda h: httpx.post(base + "/reindex", headers=h),
        lambda h: upload(base, "ok.txt", b"Some article text about the Lumen sauna.", headers=h),
        lambda h: httpx.delete(base + "/documents/lumen-sauna", headers=h),
    ]
    for call in calls:
        err = error_of(call({}), 401)
        assert "Authorization: Bearer" in err["message"]
        r = call({"Authorization": "Bearer not-the-token"})
        assert "wrong" in error_of(r, 401)["message"] and "Bearer" in r.headers["www-authenticate"]
        error_of(call({"Authorization": f"Basic {TOKEN}"}), 401)
        error_of(call({"Authorization": f"Bearer {TOKEN}x"}), 401)
    monkeypatch.delenv("ASSISTANT_ADMIN_TOKEN")
    for call in calls:
        err = error_of(call(AUTH), 403)
        assert "ASSISTANT_ADMIN_TOKEN" in err["message"] and "disabled" in err["message"]
    assert snapshot(corpus) == before
    assert not cited(http_ask(base), NEW_ID)  # nothing was reindexed either


def test_bad_uploads_are_refused_and_nothing_is_written(admin, tmp_path):
    base, corpus = admin.url, admin.settings.corpus_dir
    before = snapshot(corpus)
    article = b"The Velmoria cryo-peel session lasts exactly 17 minutes."

    err = error_of(upload(base, "big.txt", b"a" * (6 * MIB)), 413)  # refused by the body-size limit
    assert "5 MiB" in err["message"]
    err = error_of(upload(base, "big.txt", b"word " * (MIB + 1)), 413)  # just over: refused by the route
    assert "5 MiB" in err["message"]
    err = error_of(upload(base, "notes.docx", b"PK\x03\x04"), 415)
    assert ".docx" in err["message"] and ".pdf" in err["message"]
    for name in ("../../x.txt", "..\\..\\x.txt", "sub/x.txt", "/tmp/x.txt", "..", "(((.txt"):
        err = error_of(upload(base, name, article), 422)
        assert err["details"] and err["details"][0]["field"] == "file", (name, err)
    assert "plain file name" in error_of(upload(base, "../../x.txt", article), 422)["message"]
    error_of(upload(base, "empty.txt", b""), 422)
    error_of(upload(base, "latin1.txt", "caf\xe9".encode("latin-1") * 20), 422)
    assert "not a readable PDF" in error_of(upload(base, "fake.pdf", b"%PDF-1.4 nothing here"), 422)["message"]
    err = error_of(httpx.post(base + "/documents", json={"file": "x"}, headers=AUTH), 415)
    assert "multipart/form-data" in err["message"]
    err = error_of(httpx.post(base + "/documents", files={"other": ("a.txt", article)}, headers=AUTH), 422)
    assert "file" in err["message"]
    error_of(httpx.post(base + "/documents", files={"file": (None, b"a field, not a file")}, headers=AUTH), 422)
    error_of(httpx.post(base + "/documents", data={"file": "x"}, headers=AUTH), 415)  # urlencoded

    assert snapshot(corpus) == before
    for up in (corpus, corpus.parent, corpus.parent.parent, corpus.parent.parent.parent):  # where ../ leads
        assert not (up / "x.txt").exists() and not (up / "sub").exists()
    assert not list(corpus.parent.rglob("x.txt"))
    # the wider limit is for uploads only: /ask still refuses big bodies
    error_of(httpx.post(base + "/ask", json={"question": "x" * (100 * 1024)}), 413)


def test_a_reindex_while_another_holds_the_lock_is_a_409(admin):
    from assistant.reindex import reindex_lock

    admin.app.state.reindex_wait = 0.3
    with reindex_lock(admin.settings.index_dir):
        err = error_of(httpx.post(admin.url + "/reindex", headers=AUTH, timeout=60), 409)
        assert "Another reindex" in err["message"]
        err = error_of(upload(admin.url, f"{NEW_ID}.txt", NEW_V1.encode()), 409)
        assert "was saved" in err["message"] and "POST /reindex" in err["message"]
    admin.app.state.reindex_wait = 5.0
    assert httpx.post(admin.url + "/reindex", headers=AUTH, timeout=120).json()["added"] == [NEW_ID]
    assert top_cites(http_ask(admin.url), NEW_ID, OLD_FACT)


def test_questions_keep_being_answered_during_a_reindex(admin):
    """A stream of /ask requests while a reindex embeds ~40 articles: none fails."""
    from tests.bench_reindex import synthetic_articles, write_articles

    base, corpus = admin.url, admin.settings.corpus_dir
    write_articles(corpus / "batch", synthetic_articles(40), age_seconds=0)
    (corpus / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    questions = ["How long does a Lumen sauna session last?", "What is float therapy?", QUESTION,
                 "What is microneedling with PRP?"]
    stop = threading.Event()
    results: list[tuple[int, float, bool]] = []
    lock = threading.Lock()

    def asker(i: int) -> None:
        with httpx.Client(timeout=60.0) as client:
            n = i
            while not stop.is_set():
                q = questions[n % len(questions)]
                n += 1
                t = time.monotonic()
                try:
                    r = client.post(base + "/ask", json={"question": q})
                    ok = r.status_code == 200 and "answers" in r.json()
                    new = ok and q == QUESTION and cited(r.json(), NEW_ID)
                    with lock:
                        results.append((r.status_code if ok else -r.status_code, time.monotonic() - t, new))
                except httpx.HTTPError as e:
                    with lock:
                        results.append((0, time.monotonic() - t, False))
                    print("request failed:", e)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(asker, i) for i in range(4)]
        time.sleep(0.5)
        t0 = time.monotonic()
        r = httpx.post(base + "/reindex", headers=AUTH, timeout=300)
        took = time.monotonic() - t0
        during = len(results)
        time.sleep(1.0)
        stop.set()
        for f in futures:
            f.result()
    assert r.status_code == 200 and len(r.json()["added"]) == 41, r.text
    lat = sorted(x[1] for x in results)
    print(f"reindex took {took:.1f}s; {during} questions answered meanwhile; "
          f"latency median {lat[len(lat) // 2]:.2f}s, max {lat[-1]:.2f}s")
    failed = [x for x in results if x[0] != 200]
    assert not failed, failed
    assert during >= 8, (during, took)  # the server kept answering while it reindexed
    assert any(new for _, _, new in results), "the new article was never cited after the reindex"
    assert top_cites(http_ask(base), NEW_ID, OLD_FACT)

"""Citation metadata through the real faces: `source` of the answer JSON, GET /documents, the
article view and `assistant ask`, for an uploaded HTML article with author/date meta tags, a
plain-text article with a byline, an upload with its web address, and a page added with
`assistant add URL` from a local web server. Unknown fields are null."""
from __future__ import annotations

import httpx
import pytest

from tests.conftest_server import run_server
from tests.test_documents import AUTHORED_HTML
from tests.test_reindex import (  # noqa: F401  (fixtures)
    OLD_FACT,
    OLD_WORD,
    PAGE_HTML,
    QUESTION,
    base_build,
    cli_dirs,
    embedder,
    open_assistant,
    run_cli,
    web_server,
    workspace,
)

TOKEN = "citations-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FIELDS = ("author", "published", "site", "original_url")

BYLINE_TXT = """Tidepool Serum Notes
By Aino Virtanen
Published: 12 March 2023
The tidepool serum is a seaweed serum that is applied to damp skin every evening.
A bottle of tidepool serum lasts about six weeks when used every evening.
"""


@pytest.fixture
def server(workspace, embedder, monkeypatch):
    from assistant.app import create_app

    monkeypatch.setenv("ASSISTANT_ADMIN_TOKEN", TOKEN)
    app = create_app(assistant=open_assistant(workspace, embedder))
    with run_server(app) as url:
        yield type("S", (), {"url": url, "settings": workspace})()


def upload(base: str, name: str, data: bytes, **form) -> dict:
    r = httpx.post(base + "/documents", files={"file": (name, data)}, data=form, headers=AUTH, timeout=120)
    assert r.status_code == 201, r.text
    return r.json()


def ask(url: str, question: str) -> dict:
    r = httpx.post(url + "/ask", json={"question": question, "top_k": 3}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def meta(d: dict) -> tuple:
    return tuple(d[k] for k in FIELDS)


def test_html_article_with_author_and_date_meta(server):
    doc_id = upload(server.url, "frostleaf.html", AUTHORED_HTML.encode())["doc_id"]
    want = ("Jane Doe", "2023-03-12", "Example Clinic", "https://example-clinic.com/guides/frostleaf")
    res = ask(server.url, "What is the frostleaf mask made from?")
    top = res["answers"][0]
    assert top["source"]["doc_id"] == doc_id and meta(top["source"]) == want
    assert "Jane Doe" not in top["text"]
    docs = {d["doc_id"]: d for d in httpx.get(server.url + "/documents").json()}
    assert meta(docs[doc_id]) == want
    view = httpx.get(server.url + f"/documents/{doc_id}.json").json()
    assert meta(view) == want and "Jane Doe" not in view["text"]
    page = httpx.get(server.url + f"/documents/{doc_id}", headers={"Accept": "text/html"}).text
    assert "By Jane Doe" in page and "12 March 2023" in page
    assert 'href="https://example-clinic.com/guides/frostleaf"' in page and "Example Clinic ↗" in page
    # an article that says nothing about itself: the four fields are there, and null
    other = ask(server.url, "How long does a Lumen sauna session last?")["answers"][0]["source"]
    assert other["doc_id"] == "lumen-sauna" and meta(other) == (None, None, None, None)


def test_plain_text_article_with_a_byline(server):
    doc_id = upload(server.url, "tidepool.txt", BYLINE_TXT.encode())["doc_id"]
    top = ask(server.url, "How long does a bottle of tidepool serum last?")["answers"][0]
    assert top["source"]["doc_id"] == doc_id
    assert meta(top["source"]) == ("Aino Virtanen", "2023-03-12", None, None)
    text = httpx.get(server.url + f"/documents/{doc_id}.json").json()["text"]
    assert "Aino Virtanen" not in text and "Published" not in text
    assert text.startswith("Tidepool Serum Notes\nThe tidepool serum is a seaweed serum")


def test_upload_with_its_web_address(server):
    doc_id = upload(server.url, "tidepool.txt", BYLINE_TXT.encode(), url="https://www.seaside-skin.example/tidepool")["doc_id"]
    top = ask(server.url, "How long does a bottle of tidepool serum last?")["answers"][0]
    assert meta(top["source"]) == ("Aino Virtanen", "2023-03-12", "seaside-skin.example",
                                   "https://www.seaside-skin.example/tidepool")
    corpus = server.settings.corpus_dir
    assert (corpus / ".tidepool.txt.meta.json").is_file()  # hidden: never read as an article
    # the same file again with another address: the metadata follows without a content change
    r = httpx.post(server.url + "/documents", files={"file": ("tidepool.txt", BYLINE_TXT.encode())},
                   data={"url": "https://seaside-skin.example/v2"}, headers=AUTH, timeout=120)
    assert r.status_code == 200 and r.json()["report"]["changed"] == [doc_id], r.text
    assert httpx.get(server.url + f"/documents/{doc_id}.json").json()["original_url"] == "https://seaside-skin.example/v2"
    # a refused upload (a different file of that name) leaves the metadata alone
    r = httpx.post(server.url + "/documents", files={"file": ("tidepool.txt", (BYLINE_TXT + "More.\n").encode())},
                   data={"url": "https://elsewhere.example/x"}, headers=AUTH, timeout=60)
    assert r.status_code == 409, r.text
    assert "seaside-skin.example/v2" in (corpus / ".tidepool.txt.meta.json").read_text()
    for bad in ("ftp://x.org/a", "javascript:alert(1)", "x" * 2100):
        r = httpx.post(server.url + "/documents", files={"file": ("t2.txt", BYLINE_TXT.encode())},
                       data={"url": bad}, headers=AUTH, timeout=60)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "url", r.text
    assert not (corpus / "t2.txt").exists()
    r = httpx.delete(server.url + f"/documents/{doc_id}", headers=AUTH, timeout=120)
    assert r.status_code == 200 and not (corpus / ".tidepool.txt.meta.json").exists()


def test_a_page_added_with_assistant_add_url(workspace, embedder):
    page = PAGE_HTML.replace("<title>", '<meta name="author" content="Mira Solberg"><title>')
    routes = {"/guides/velmoria.html": (200, "text/html; charset=utf-8",
                                        page.format(word=OLD_WORD, fact=OLD_FACT).encode())}
    with web_server(routes) as site:
        url = site + "/guides/velmoria.html"
        res = run_cli("add", url, *cli_dirs(workspace))
        assert res.exit_code == 0, res.output
    ast = open_assistant(workspace, embedder)
    top = ast.ask(QUESTION).answers[0]
    assert top.source.original_url == url
    assert top.source.site == "127.0.0.1" and top.source.author == "Mira Solberg"
    docs = {d.doc_id: d for d in ast.documents()}
    assert docs[top.source.doc_id].original_url == url
    out = run_cli("ask", QUESTION, "--top-k", "1", *cli_dirs(workspace)).output
    assert "Mira Solberg" in out and "127.0.0.1" in out
    as_json = run_cli("ask", QUESTION, "--top-k", "1", "--json", *cli_dirs(workspace)).output
    assert f'"original_url": "{url}"' in as_json

"""Incremental reindex with the real model, FAISS and BM25: add, change, remove, the lock,
crashes, PDFs, hot swap in a server with two workers, and `assistant add` (file and URL).

The shared pieces (a small base corpus built once, an invented article the base cannot
answer, a PDF writer, polling helpers) are imported by test_admin.py and test_watch.py.
"""
from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np
import pytest

from tests.conftest_server import REAL_CORPUS, free_socket
from tests.fixtures_core import make_pdf  # noqa: F401  (test_admin imports it from here)

REPO = Path(__file__).resolve().parent.parent
ASSISTANT_BIN = str(Path(sys.executable).parent / "assistant")

# --- an invented article the base corpus cannot answer ---------------------------------------

NEW_ID = "velmoria-cryo-peel"
NEW_V1 = """Velmoria Cryo-Peel Guide
The Velmoria cryo-peel is a cold enzyme peel made with zandrelite crystals.
A Velmoria cryo-peel session lasts exactly 17 minutes.
Clients repeat the Velmoria cryo-peel every five weeks.
"""
NEW_V2 = """Velmoria Cryo-Peel Guide
The Velmoria cryo-peel is a cold enzyme peel made with quillofern resin.
A Velmoria cryo-peel session lasts exactly 41 minutes.
Clients repeat the Velmoria cryo-peel every nine weeks.
"""
QUESTION = "How long does a Velmoria cryo-peel session last?"
OLD_FACT, NEW_FACT = "17 minutes", "41 minutes"
OLD_WORD, NEW_WORD = "zandrelite", "quillofern"

BASE_ARTICLES = {
    "lumen-sauna.txt": """Lumen Infrared Sauna Basics
The Lumen infrared sauna warms the body with far-infrared panels instead of hot air.
A Lumen sauna session usually lasts thirty minutes at about fifty degrees Celsius.
Drink water before and after a Lumen session to stay hydrated.
""",
    "guides/tidewater-float.md": """# Tidewater Float Therapy

Tidewater float therapy means lying in a shallow pool of warm salt water in a dark, quiet room.

A float lasts about an hour. Many people say it eases sore muscles and helps them sleep.
""",
}


def write_base_corpus(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    shutil.copy(REAL_CORPUS / "microneedling-with-prp.txt", corpus / "microneedling-with-prp.txt")
    for name, text in BASE_ARTICLES.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text, encoding="utf-8")


@pytest.fixture(scope="session")
def embedder():
    from assistant.embedder import get_embedder

    return get_embedder()


@pytest.fixture(scope="session")
def base_build(tmp_path_factory, embedder) -> Path:
    """The base corpus and its index, built once; tests work on copies (`workspace`)."""
    from assistant import Settings
    from assistant.reindex import reindex

    root = tmp_path_factory.mktemp("base")
    write_base_corpus(root / "corpus")
    report = reindex(Settings(corpus_dir=root / "corpus", index_dir=root / "index"), embedder)
    assert report.articles == 3, report
    return root


@pytest.fixture
def workspace(base_build, tmp_path):
    """Settings over a private copy of the base corpus and its index."""
    from assistant import Settings

    shutil.copytree(base_build / "corpus", tmp_path / "corpus")
    shutil.copytree(base_build / "index", tmp_path / "index")
    return Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index")


def open_assistant(settings, embedder):
    from assistant import Assistant

    return Assistant.open(settings=settings, embedder=embedder, require_index=False)


# --- looking at answers ----------------------------------------------------------------------

def _answers(resp) -> list[dict]:
    if not isinstance(resp, dict):
        resp = resp.model_dump()
    return resp.get("answers") or []


def cited(resp, doc_id: str) -> bool:
    """Whether any answer quotes `doc_id` (as source or as `also_in`)."""
    return any(
        a["source"]["doc_id"] == doc_id or any(x["doc_id"] == doc_id for x in a.get("also_in") or [])
        for a in _answers(resp)
    )


def top_cites(resp, doc_id: str, fact: str) -> bool:
    a = _answers(resp)
    return bool(a) and a[0]["source"]["doc_id"] == doc_id and fact in a[0]["text"]


def quoted(resp, text: str) -> bool:
    return any(text in a["text"] for a in _answers(resp))


def wait_until(fn: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll `fn` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def ask_until(ast, ok: Callable[[object], bool], question: str = QUESTION, timeout: float = 15.0):
    """Ask until the answer satisfies `ok` (a server swaps to a new index within a second or two)."""
    def attempt():
        r = ast.ask(question)
        return r if ok(r) else None

    return wait_until(attempt, timeout=timeout, interval=0.2, what=f"an answer to {question!r} that passes")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones too), for "nothing was written" checks."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def http_ask(base: str, question: str = QUESTION) -> dict:
    r = httpx.post(base + "/ask", json={"question": question}, timeout=60.0)
    assert r.status_code == 200, r.text
    return r.json()


# --- a PDF with a text layer, written by hand -------------------------------------------------



PDF_ID = "orravine-scalp-mist"
PDF_PAGES = [
    ["Orravine Scalp Mist", "The Orravine scalp mist is sprayed on the scalp after washing and is",
     "left on overnight. It is made with fermented kelboria root.", "Safety", "- do not use on broken skin",
     "- keep it away from the eyes", "1"],
    ["Orravine Scalp Mist", "An Orravine bottle holds 120 millilitres and lasts about six weeks of daily",
     "use. Most people notice softer hair after the third week of treat-", "ment.", "2"],
]
PDF_QUESTION = "What is the Orravine scalp mist made with?"


# --- incremental reindex ---------------------------------------------------------------------

def _vocab_has(index, word: str) -> bool:
    from assistant.index import tokenize

    return tokenize([word])[0][0] in index.vocab


def _check_stores(index) -> None:
    """FAISS holds exactly the passages and sentences of the index, row for row."""
    assert len(index.passage_store) == len(index.passages)
    assert len(index.sentence_store) == len(index.sent_passage)
    for row in range(len(index.passages)):
        rows, scores = index.passage_store.search(index.passage_vectors[row], 1)
        assert int(rows[0]) == row and scores[0] > 0.999


def test_add_change_remove_cites_only_the_current_text(workspace, embedder):
    from assistant import index as ix

    ast = open_assistant(workspace, embedder)
    assert not cited(ast.ask(QUESTION), NEW_ID)
    path = workspace.corpus_dir / f"{NEW_ID}.txt"

    path.write_text(NEW_V1, encoding="utf-8")
    r = ast.reindex()
    assert r.added == [NEW_ID] and r.unchanged == 3 and not r.changed and not r.removed, r
    assert r.embedded_passages == 1, r  # only the new article was embedded
    resp = ast.ask(QUESTION)
    assert top_cites(resp, NEW_ID, OLD_FACT), resp

    path.write_text(NEW_V2, encoding="utf-8")
    r = ast.reindex()
    assert r.changed == [NEW_ID] and r.unchanged == 3, r
    resp = ast.ask(QUESTION)
    assert top_cites(resp, NEW_ID, NEW_FACT) and not quoted(resp, OLD_FACT), resp
    index = ix.load(workspace.index_dir)
    assert not any(OLD_WORD in p.text for p in index.passages)
    assert not _vocab_has(index, OLD_WORD) and _vocab_has(index, NEW_WORD)  # BM25 forgot the old text
    _check_stores(index)
    resp = ast.ask(f"Which peel is made with {OLD_WORD} crystals?")
    assert not quoted(resp, OLD_WORD), resp

    path.unlink()
    r = ast.reindex()
    assert r.removed == [NEW_ID] and r.articles == 3, r
    for q in (QUESTION, "What is the Velmoria cryo-peel made with?", f"Tell me about {NEW_WORD} resin"):
        assert not cited(ast.ask(q), NEW_ID)
    index = ix.load(workspace.index_dir)
    assert not any(p.doc_id == NEW_ID for p in index.passages) and NEW_ID not in index.docs
    assert not _vocab_has(index, NEW_WORD)
    _check_stores(index)


def test_incremental_index_equals_a_fresh_build(workspace, embedder, tmp_path):
    """After adds, changes and removals, the index is what a build from scratch would make."""
    from assistant import Settings
    from assistant import index as ix
    from assistant.reindex import reindex

    c = workspace.corpus_dir
    (c / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    reindex(workspace, embedder)
    (c / f"{NEW_ID}.txt").write_text(NEW_V2, encoding="utf-8")
    (c / "lumen-sauna.txt").unlink()
    (c / "guides" / "tidewater-float.md").write_text(BASE_ARTICLES["guides/tidewater-float.md"] + "\nFloats cost forty euros.\n")
    reindex(workspace, embedder)
    inc = ix.load(workspace.index_dir)

    fresh_settings = Settings(corpus_dir=c, index_dir=tmp_path / "fresh-index")
    reindex(fresh_settings, embedder)
    fresh = ix.load(fresh_settings.index_dir)

    # the same rows up to order (an incremental build keeps old rows first, then appends)
    assert sorted(p.id for p in inc.passages) == sorted(p.id for p in fresh.passages)
    perm = np.array([{p.id: i for i, p in enumerate(inc.passages)}[p.id] for p in fresh.passages])
    s_perm = np.concatenate([np.arange(*inc.sent_rows[r]) for r in perm])
    assert inc.docs.keys() == fresh.docs.keys()
    assert inc.vocab == fresh.vocab
    assert [len(inc.passages[r].sentences) for r in perm] == [len(p.sentences) for p in fresh.passages]
    np.testing.assert_allclose(inc.passage_vectors[perm].astype(np.float32), fresh.passage_vectors.astype(np.float32),
                               atol=1e-4 if ix.PASSAGE_DTYPE == "float32" else 2e-3)
    np.testing.assert_allclose(inc.sent_vectors[s_perm].astype(np.float32), fresh.sent_vectors.astype(np.float32),
                               atol=2e-3)
    for query in (["velmoria", "peel"], ["float", "euro"], ["prp"]):
        toks = [t for q in query for t in ix.tokenize([q])[0]]
        # BM25 updated from the kept postings gives the scores of a build from nothing, bit for bit
        np.testing.assert_array_equal(ix.bm25_scores(inc.bm25_passages, toks, len(inc.passages))[perm],
                                      ix.bm25_scores(fresh.bm25_passages, toks, len(fresh.passages)))
        np.testing.assert_array_equal(ix.bm25_scores(inc.bm25_sentences, toks, len(inc.sent_passage))[s_perm],
                                      ix.bm25_scores(fresh.bm25_sentences, toks, len(fresh.sent_passage)))
    _check_stores(inc)
    # and the answers are the same
    a_inc, a_fresh = open_assistant(workspace, embedder), open_assistant(fresh_settings, embedder)
    for q in (QUESTION, "How long does a float last?", "What does a float cost?", "What is PRP?",
              "Compare microneedling and PRP"):
        got, want = a_inc.ask(q), a_fresh.ask(q)
        assert [(x["source"]["doc_id"], x["text"]) for x in _answers(got)] == \
            [(x["source"]["doc_id"], x["text"]) for x in _answers(want)], q


def test_unchanged_articles_are_neither_reread_nor_rehashed(workspace, embedder, monkeypatch):
    from assistant import index as ix
    from assistant import reindex as rx

    c = workspace.corpus_dir
    past = time.time() - 3600
    for p in c.rglob("*"):
        os.utime(p, (past, past))
    rx.reindex(workspace, embedder)  # copied files: hashed once, then their stats are trusted
    gen = ix.current_generation(workspace.index_dir)

    reads, hashes = [], []
    real_read, real_hash = rx.read_document, rx.file_sha256
    monkeypatch.setattr(rx, "read_document", lambda p, *a, **k: reads.append(p.name) or real_read(p, *a, **k))
    monkeypatch.setattr(rx, "file_sha256", lambda p: hashes.append(p.name) or real_hash(p))
    t: dict = {}
    r = rx.reindex(workspace, embedder, timings=t)
    assert not r.touched and reads == [] and hashes == [], (r, reads, hashes)
    assert ix.current_generation(workspace.index_dir) == gen  # nothing changed: no new generation

    (c / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    r = rx.reindex(workspace, embedder, timings=t)
    assert r.added == [NEW_ID] and reads == [f"{NEW_ID}.txt"] and hashes == [f"{NEW_ID}.txt"], (reads, hashes)
    assert ix.load_tokens(ix.current_generation(workspace.index_dir)) is not None  # tokens cached for next time

    # same size, same mtime, different bytes: the ctime still gives the change away
    p = c / "lumen-sauna.txt"
    st = p.stat()
    p.write_text(BASE_ARTICLES["lumen-sauna.txt"].replace("thirty", "ninety"), encoding="utf-8")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size
    r = rx.reindex(workspace, embedder)
    assert r.changed == ["lumen-sauna"], r


def test_changed_tokenising_code_rebuilds_bm25_without_re_embedding(workspace, embedder, monkeypatch):
    """New tokenising code (an upgrade) with no article changed: BM25 is rebuilt from the new
    tokens on the next reindex; nothing is re-embedded."""
    from assistant import index as ix
    from assistant import reindex as rx

    rx.reindex(workspace, embedder)
    gen = ix.current_generation(workspace.index_dir)
    assert not _vocab_has(ix.load(workspace.index_dir), "zzmarker")
    prints = dict(rx.fingerprints())
    monkeypatch.setattr(rx, "fingerprints", lambda: {**prints, "bm25": prints["bm25"] + "-new"})
    real = ix.tokenize
    monkeypatch.setattr(ix, "tokenize", lambda texts: [t + ["zzmarker"] for t in real(texts)])
    r = rx.reindex(workspace, embedder)
    assert not r.touched and r.embedded_passages == 0, r
    assert ix.current_generation(workspace.index_dir) != gen
    index = ix.load(workspace.index_dir)
    assert "zzmarker" in index.vocab  # the passages were tokenised again, by the new code
    monkeypatch.undo()
    assert rx.reindex(workspace, embedder).embedded_passages == 0


def test_subjects_are_read_at_open_and_by_the_reindex_not_on_a_question(workspace, embedder):
    """The first question after start or after a reindex costs what any other does: the stored
    subjects (seconds of JSON at a million passages) are read when the generation is loaded."""
    from assistant import subjects as sj

    def ready(index) -> bool:
        hit = sj._cache.get(id(index))
        return hit is not None and hit[0]() is index

    a = open_assistant(workspace, embedder)
    first = a._current().index
    assert ready(first)  # before any question
    (workspace.corpus_dir / "zz-new.md").write_text("# Cryo facials\n\nA cryo facial cools the skin.\n",
                                                     encoding="utf-8")
    a.reindex()
    second = a._current().index
    assert second is not first and ready(second)


def test_fingerprints_are_of_the_code_a_process_runs(tmp_path):
    """Files edited under a running process (an upgrade in place) do not change the fingerprints
    it records: they are taken at import, else its next reindex would re-embed everything."""
    import json

    pkg = tmp_path / "pkg"
    shutil.copytree(Path(__file__).resolve().parent.parent / "assistant", pkg / "assistant",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1])\n"
        "from pathlib import Path\n"
        "import assistant.reindex as rx\n"
        "if sys.argv[2] == 'edit':\n"
        "    for name in ('index.py', 'chunking.py'):\n"
        "        f = Path(sys.argv[1]) / 'assistant' / name\n"
        "        f.write_text('# upgraded\\n# in place\\n' + f.read_text())\n"
        "print(json.dumps(rx.fingerprints()))\n"
    )

    def prints(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code, str(pkg), mode], capture_output=True, text=True,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    before = prints("plain")
    assert prints("edit") == before  # edited after import: the running code's fingerprints
    assert prints("plain") != before  # a process started on the edited files sees new code


def test_unreadable_files_are_skipped_without_rebuilding_each_time(workspace, embedder):
    from assistant import index as ix
    from assistant.reindex import reindex

    (workspace.corpus_dir / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (workspace.corpus_dir / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me notes.".encode("latin-1"))
    r = reindex(workspace, embedder)
    assert sorted(r.skipped) == ["broken.pdf", "latin1.txt"] and r.articles == 3, r
    gen = ix.current_generation(workspace.index_dir)
    r = reindex(workspace, embedder)
    assert sorted(r.skipped) == ["broken.pdf", "latin1.txt"] and not r.touched
    assert ix.current_generation(workspace.index_dir) == gen


def test_pdf_articles_are_read_and_answered(workspace, embedder):
    from assistant.documents import read_document

    pdf = workspace.corpus_dir / f"{PDF_ID}.pdf"
    pdf.write_bytes(make_pdf(PDF_PAGES, title="Orravine Scalp Mist"))
    doc = read_document(pdf, workspace.corpus_dir)
    assert doc.title == "Orravine Scalp Mist"
    assert "It is made with fermented kelboria root." in doc.text
    assert "after the third week of treatment." in doc.text  # hyphenation undone across lines
    assert "- keep it away from the eyes" in doc.text.splitlines()  # list items stay lines
    assert not any(line.strip() in ("1", "2") for line in doc.text.splitlines())  # page numbers out
    assert doc.text.count("Orravine Scalp Mist") == 1  # the running header once

    ast = open_assistant(workspace, embedder)
    r = ast.reindex()
    assert r.added == [PDF_ID], r
    resp = ast.ask(PDF_QUESTION)
    assert top_cites(resp, PDF_ID, "kelboria"), resp
    assert _answers(resp)[0]["source"]["path"] == f"{PDF_ID}.pdf"


# --- the lock, crashes -----------------------------------------------------------------------

def test_a_second_reindex_waits_for_the_lock_or_fails_clearly(workspace, embedder):
    from assistant.errors import ReindexBusyError
    from assistant.reindex import reindex, reindex_lock

    (workspace.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    done = {}
    with reindex_lock(workspace.index_dir):
        t0 = time.monotonic()
        with pytest.raises(ReindexBusyError, match="Another reindex .* is running .*pid"):
            reindex(workspace, embedder, lock_timeout=0.3)
        assert time.monotonic() - t0 < 5
        waiter = threading.Thread(target=lambda: done.setdefault("report", reindex(workspace, embedder, lock_timeout=60)))
        waiter.start()
        time.sleep(0.5)
        assert "report" not in done  # still waiting for us
    waiter.join(60)
    assert done["report"].added == [NEW_ID]


def test_a_crash_while_writing_leaves_the_old_index_serving(workspace, embedder, monkeypatch):
    from assistant import index as ix
    from assistant.reindex import reindex

    ast = open_assistant(workspace, embedder)
    before = ix.current_generation(workspace.index_dir)
    (workspace.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    real_save = ix.FaissStore.save
    calls = []

    def crash_on_second(self, path):
        calls.append(path)
        if len(calls) == 2:  # passages.faiss written, then the process "dies"
            raise OSError(28, "No space left on device")
        return real_save(self, path)

    monkeypatch.setattr(ix.FaissStore, "save", crash_on_second)
    with pytest.raises(OSError, match="No space"):
        reindex(workspace, embedder)
    monkeypatch.setattr(ix.FaissStore, "save", real_save)

    assert ix.current_generation(workspace.index_dir) == before
    assert list(workspace.index_dir.glob(".tmp-gen-*"))  # the half-written build is there...
    resp = ast.ask("How long does a Lumen sauna session last?")
    assert top_cites(resp, "lumen-sauna", "thirty minutes"), resp  # ...and the old index still answers
    assert not cited(ast.ask(QUESTION), NEW_ID)

    r = reindex(workspace, embedder)  # the next one recovers
    assert r.added == [NEW_ID], r
    assert not list(workspace.index_dir.glob(".tmp-gen-*"))
    wait_until(lambda: top_cites(ast.ask(QUESTION), NEW_ID, OLD_FACT), timeout=15, what="the new index")


@pytest.mark.slow
def test_a_reindex_killed_mid_embedding_leaves_the_old_index_and_the_next_one_completes(workspace, embedder):
    from assistant import index as ix
    from assistant.reindex import reindex, reindex_lock
    from tests.bench_reindex import synthetic_articles, write_articles

    ast = open_assistant(workspace, embedder)
    before = ix.current_generation(workspace.index_dir)
    write_articles(workspace.corpus_dir / "batch", synthetic_articles(60), age_seconds=0)  # ~10 s to embed
    proc = subprocess.Popen(
        [ASSISTANT_BIN, "reindex", "--corpus", str(workspace.corpus_dir), "--index", str(workspace.index_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    try:
        lock = workspace.index_dir / ".lock"
        # the model loads before the lock is taken: once the lock names the child, it is embedding
        wait_until(lambda: proc.poll() is None and lock.exists() and lock.read_text().split()[:1] == [str(proc.pid)],
                   timeout=120, interval=0.05, what="the reindex subprocess to take the lock")
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert ix.current_generation(workspace.index_dir) == before
    resp = ast.ask("How long does a Lumen sauna session last?")
    assert top_cites(resp, "lumen-sauna", "thirty minutes"), resp

    with reindex_lock(workspace.index_dir, timeout=0):  # the dead process's lock is gone
        pass
    r = reindex(workspace, embedder)
    assert len(r.added) == 60 and r.articles == 63, r
    assert ix.current_generation(workspace.index_dir) != before


# --- hot swap --------------------------------------------------------------------------------

def test_a_running_assistant_swaps_to_a_generation_written_by_another_process(workspace, embedder):
    """Another process's reindex (here: the core called directly) is picked up within seconds."""
    from assistant.reindex import reindex

    ast = open_assistant(workspace, embedder)
    assert not cited(ast.ask(QUESTION), NEW_ID)
    (workspace.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    reindex(workspace, embedder)
    wait_until(lambda: top_cites(ast.ask(QUESTION), NEW_ID, OLD_FACT), timeout=15, interval=0.2,
               what="the assistant to answer from the new generation")


@pytest.mark.slow
def test_serve_with_two_workers_and_watch_switches_every_worker(workspace):
    """`assistant serve --workers 2 --watch`: a file dropped in the corpus is answered by every worker."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    base = f"http://127.0.0.1:{port}"
    token = "two-workers-token"
    env = {**os.environ, "ASSISTANT_CORPUS_DIR": str(workspace.corpus_dir), "ASSISTANT_INDEX_DIR": str(workspace.index_dir),
           "ASSISTANT_ADMIN_TOKEN": token}
    proc = subprocess.Popen([ASSISTANT_BIN, "serve", "--workers", "2", "--watch", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def fresh(path: str, **kw) -> httpx.Response:  # a new connection each time: any worker may answer
        with httpx.Client(timeout=60.0, headers={"Connection": "close"}) as c:
            return c.request(kw.pop("method", "GET"), base + path, **kw)

    def health_articles() -> int | None:
        try:
            r = fresh("/health")
            return r.json()["articles"] if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    try:
        wait_until(lambda: proc.poll() is None and all(health_articles() == 3 for _ in range(10)), timeout=180,
                   interval=0.5, what="both workers to serve the base index")
        assert not cited(fresh("/ask", method="POST", json={"question": QUESTION}).json(), NEW_ID)
        (workspace.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")

        def all_switched() -> bool:
            return all(health_articles() == 4 for _ in range(30))

        wait_until(all_switched, timeout=60, interval=0.5, what="every worker to serve the new generation")
        failures = []
        for _ in range(12):
            r = fresh("/ask", method="POST", json={"question": QUESTION})
            if r.status_code != 200 or not top_cites(r.json(), NEW_ID, OLD_FACT):
                failures.append(r.text[:200])
        assert not failures, failures

        # an upload answers once every worker has switched: ask right away, any worker answers it
        auth = {"Authorization": f"Bearer {token}"}
        r = fresh("/documents", method="POST", headers=auth, files={"file": (f"{PDF_ID}.pdf", make_pdf(PDF_PAGES))})
        assert r.status_code == 201, r.text
        answers = [fresh("/ask", method="POST", json={"question": PDF_QUESTION}).json() for _ in range(20)]
        assert all(top_cites(a, PDF_ID, "kelboria") for a in answers), answers
        r = fresh(f"/documents/{PDF_ID}", method="DELETE", headers=auth)
        assert r.status_code == 200, r.text
        answers = [fresh("/ask", method="POST", json={"question": PDF_QUESTION}).json() for _ in range(20)]
        assert not any(cited(a, PDF_ID) for a in answers), answers
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# --- `assistant add` -------------------------------------------------------------------------

def run_cli(*args: str):
    """The typer app in this process (it shares the loaded model)."""
    from typer.testing import CliRunner

    from assistant.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def cli_dirs(settings) -> list[str]:
    return ["--corpus", str(settings.corpus_dir), "--index", str(settings.index_dir)]


def test_cli_add_a_file_then_change_and_remove_it(workspace, embedder, tmp_path):
    src = tmp_path / "incoming" / f"{NEW_ID}.txt"
    src.parent.mkdir()
    src.write_text(NEW_V1, encoding="utf-8")
    res = run_cli("add", str(src), *cli_dirs(workspace))
    assert res.exit_code == 0, res.output
    assert "answerable now" in res.output and NEW_ID in res.output
    assert (workspace.corpus_dir / f"{NEW_ID}.txt").read_text() == NEW_V1
    ast = open_assistant(workspace, embedder)
    assert top_cites(ast.ask(QUESTION), NEW_ID, OLD_FACT)

    src.write_text(NEW_V2, encoding="utf-8")
    res = run_cli("add", str(src), *cli_dirs(workspace))  # never overwrite silently
    assert res.exit_code == 2 and "--replace" in res.output and "different content" in res.output, res.output
    assert (workspace.corpus_dir / f"{NEW_ID}.txt").read_text() == NEW_V1
    res = run_cli("add", str(src), "--replace", *cli_dirs(workspace))
    assert res.exit_code == 0, res.output
    resp = ask_until(ast, lambda r: top_cites(r, NEW_ID, NEW_FACT))
    assert not quoted(resp, OLD_FACT)

    (workspace.corpus_dir / f"{NEW_ID}.txt").unlink()
    res = run_cli("reindex", *cli_dirs(workspace))
    assert res.exit_code == 0 and f"removed: {NEW_ID}" in res.output, res.output
    wait_until(lambda: not cited(ast.ask(QUESTION), NEW_ID), timeout=10)


def test_cli_add_a_pdf_under_another_name(workspace, embedder, tmp_path):
    src = tmp_path / "Scan 0042.PDF"
    src.write_bytes(make_pdf(PDF_PAGES))
    res = run_cli("add", str(src), "--name", "orravine notes", *cli_dirs(workspace))
    assert res.exit_code == 0, res.output
    assert (workspace.corpus_dir / "orravine-notes.pdf").exists()
    assert top_cites(open_assistant(workspace, embedder).ask(PDF_QUESTION), "orravine-notes", "kelboria")


def test_cli_add_refuses_bad_input_with_exit_code_2(workspace, tmp_path):
    before = snapshot(workspace.corpus_dir)
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "garbage.pdf").write_bytes(b"not a pdf at all")
    cases = [
        ([str(tmp_path / "missing.txt")], "no such file"),
        ([str(tmp_path / "notes.docx")], "unsupported file type '.docx'"),
        ([str(tmp_path / "empty.txt")], "is empty"),
        ([str(tmp_path / "garbage.pdf")], "not a readable PDF"),
        ([str(tmp_path)], "not a file"),
        (["ftp://example.org/a.html"], "only http:// and https://"),
    ]
    for args, message in cases:
        res = run_cli("add", *args, *cli_dirs(workspace))
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
    assert snapshot(workspace.corpus_dir) == before
    # the real executable too: exit status 2 and the message on stderr
    p = subprocess.run([ASSISTANT_BIN, "add", str(tmp_path / "missing.txt"), *cli_dirs(workspace)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no such file" in p.stderr, p


# --- `assistant add URL` from a local web server ---------------------------------------------

PAGE_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Velmoria Cryo-Peel: A Clinic Guide | Frostline Spa</title></head>
<body>
<nav><a href="/">Home</a> <a href="/shop">Shop</a> <a href="/contact">Contact us</a></nav>
<article>
<h1>Velmoria Cryo-Peel: A Clinic Guide</h1>
<p>The Velmoria cryo-peel is a cold enzyme peel made with {word} crystals that is applied to clean skin.</p>
<p>A Velmoria cryo-peel session lasts exactly {fact}, including the time needed to warm the skin up again.</p>
<p>Clients usually repeat the Velmoria cryo-peel every few weeks, and the mild redness fades within a day.</p>
</article>
<footer>Copyright Frostline Spa. Call us at 555-123-4567. Subscribe to our newsletter.</footer>
</body></html>
"""


@contextlib.contextmanager
def web_server(routes: dict[str, tuple[int, str, bytes]]) -> Iterator[str]:
    """http.server on 127.0.0.1 answering path -> (status, content type, body); routes may change."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            status, ctype, body = routes.get(self.path, (404, "text/html", b"<h1>Not found</h1>"))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_cli_add_a_web_page_by_url(workspace, embedder):
    page = lambda word, fact: (200, "text/html; charset=utf-8", PAGE_HTML.format(word=word, fact=fact).encode())  # noqa: E731
    routes = {"/guides/velmoria.html": page(OLD_WORD, OLD_FACT)}
    with web_server(routes) as site:
        url = site + "/guides/velmoria.html"
        before = set(workspace.corpus_dir.iterdir())
        res = run_cli("add", url, *cli_dirs(workspace))
        assert res.exit_code == 0, res.output
        new = set(workspace.corpus_dir.iterdir()) - before
        assert len(new) == 1, new
        saved = new.pop()
        assert saved.suffix == ".html" and saved.name.startswith("velmoria-cryo-peel-a-clinic-guide"), saved  # from the title
        doc_id = saved.stem
        ast = open_assistant(workspace, embedder)
        resp = ast.ask(QUESTION)
        assert top_cites(resp, doc_id, OLD_FACT), resp
        assert not quoted(resp, "555-123-4567") and not quoted(resp, "Shop")  # page furniture left out

        res = run_cli("add", url, *cli_dirs(workspace))  # the same page again: nothing to do
        assert res.exit_code == 0 and "already in the corpus" in res.output, res.output

        routes["/guides/velmoria.html"] = page(NEW_WORD, NEW_FACT)  # the page changed
        res = run_cli("add", url, *cli_dirs(workspace))
        assert res.exit_code == 2 and "--replace" in res.output, res.output
        res = run_cli("add", url, "--replace", *cli_dirs(workspace))
        assert res.exit_code == 0, res.output
        resp = ask_until(ast, lambda r: top_cites(r, doc_id, NEW_FACT))
        assert not quoted(resp, OLD_FACT)

        saved.unlink()
        assert run_cli("reindex", *cli_dirs(workspace)).exit_code == 0
        wait_until(lambda: not cited(ast.ask(QUESTION), doc_id), timeout=10)


def test_cli_add_url_refuses_what_is_not_a_web_page(workspace):
    before = snapshot(workspace.corpus_dir)
    routes = {
        "/file.pdf": (200, "application/pdf", make_pdf(PDF_PAGES)),
        "/data.json": (200, "application/json", b"{}"),
        "/empty.html": (200, "text/html", b"<html><body><nav>Home</nav></body></html>"),
        "/gone.html": (410, "text/html", b"gone"),
    }
    closed = free_socket()
    dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}/page.html"
    closed.close()  # nothing listens there any more
    with web_server(routes) as site:
        cases = [
            (site + "/missing.html", "HTTP 404"),
            (site + "/gone.html", "HTTP 410"),
            (site + "/file.pdf", "not an HTML page (Content-Type: application/pdf)"),
            (site + "/data.json", "not an HTML page"),
            (site + "/empty.html", "no article text"),
            (dead_url, "could not be fetched"),
        ]
        for url, message in cases:
            res = run_cli("add", url, *cli_dirs(workspace))
            assert res.exit_code == 2, (url, res.output)
            assert message in res.output, (url, res.output)
    assert snapshot(workspace.corpus_dir) == before


# --- file names ------------------------------------------------------------------------------

def test_file_names_are_tidied_and_paths_refused():
    from assistant import sources
    from assistant.errors import UnsupportedFileError

    assert sources.plain_filename("My Article (v2).TXT") == "My-Article-v2.txt"
    assert sources.plain_filename("Mésothérapie guide.md") == "Mésothérapie-guide.md"
    assert sources.plain_filename(".hidden.txt") == "hidden.txt"
    assert sources.plain_filename("_draft.txt") == "draft.txt"
    for bad in ("../../x.txt", "a/b.txt", "..\\x.txt", "C:x.txt", "/etc/passwd.txt", "..", "", "x\x00.txt"):
        with pytest.raises(sources.InvalidNameError):
            sources.plain_filename(bad)
    for bad in ("notes.docx", "noext", "script.html.exe"):
        with pytest.raises(UnsupportedFileError):
            sources.plain_filename(bad)
    with pytest.raises(sources.InvalidNameError):
        sources.plain_filename("(((.txt")
    assert sources.slug("Exosomes vs. PRP – A Guide!") == "exosomes-vs-prp-a-guide"


def test_an_interrupted_build_resumes_with_the_vectors_it_had_embedded(tmp_path, embedder, monkeypatch):
    """Windows of embedded texts are kept on disk as they finish; after a crash, the next build
    embeds only the rest, and the index is the one a build in one go makes."""
    from assistant import Settings
    from assistant import index as ix
    from assistant import reindex as rx
    from tests.fixtures_core import copy_seed_corpus

    corpus = copy_seed_corpus(tmp_path / "corpus")
    settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "index")
    monkeypatch.setattr(rx, "EMBED_WINDOW", 64)
    calls = {"n": 0}
    real = embedder.encode_passages

    def dies_later(texts, batch_size=64, progress=False):
        calls["n"] += 1
        if calls["n"] > 20:  # after two windows of 64 texts (8 per batch)
            raise KeyboardInterrupt("killed")
        return real(texts, batch_size=batch_size, progress=progress)

    monkeypatch.setattr(embedder, "encode_passages", dies_later)
    with pytest.raises(KeyboardInterrupt):
        rx.reindex(settings, embedder)
    assert ix.current_generation(settings.index_dir) is None
    assert len(list((settings.index_dir / rx.CACHE_DIR).glob("*.keys.npy"))) == 2
    monkeypatch.setattr(embedder, "encode_passages", real)
    tm: dict = {}
    report = rx.reindex(settings, embedder, timings=tm)
    assert tm["reused_texts"] == 128 and tm["embedded_texts"] > 0
    assert not (settings.index_dir / rx.CACHE_DIR).exists()  # cleared once the build is written
    resumed = ix.load(settings.index_dir)
    fresh_settings = Settings(corpus_dir=corpus, index_dir=tmp_path / "fresh")
    rx.reindex(fresh_settings, embedder)
    fresh = ix.load(fresh_settings.index_dir)
    assert [p.id for p in resumed.passages] == [p.id for p in fresh.passages] and report.passages == len(fresh.passages)
    np.testing.assert_allclose(resumed.passage_vectors, fresh.passage_vectors, atol=1e-5)
    np.testing.assert_array_equal(resumed.sent_vectors, fresh.sent_vectors)


def test_embedding_keeps_order_and_windows_sort_by_length(embedder, monkeypatch):
    from assistant import reindex as rx

    texts = [("word " * n).strip() + f" {i}" for i, n in enumerate([40, 2, 25, 3, 60, 1, 9, 33, 5, 17])]
    seen: list[list[int]] = []
    real = embedder.encode_passages
    monkeypatch.setattr(embedder, "encode_passages",
                        lambda t, batch_size=64, progress=False: seen.append([len(x) for x in t]) or real(t, batch_size=batch_size))
    out = rx._embed(embedder, texts, progress=False, batch=2)
    monkeypatch.setattr(embedder, "encode_passages", real)
    np.testing.assert_allclose(out, real(texts, batch_size=16), atol=1e-5)
    flat = [n for b in seen for n in b]
    assert flat == sorted(flat)  # one window here: every batch is of like lengths

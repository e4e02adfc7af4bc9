"""`serve --watch`: the corpus watcher reindexes added, changed and removed files within seconds,
debounced, ignoring hidden and temporary files. (The CLI wiring with two workers is tested in
test_reindex.py::test_serve_with_two_workers_and_watch_switches_every_worker.)"""
from __future__ import annotations

import time

import pytest

from tests.conftest_server import run_server
from tests.test_reindex import (  # noqa: F401  (fixtures)
    NEW_FACT,
    NEW_ID,
    NEW_V1,
    NEW_V2,
    OLD_FACT,
    QUESTION,
    base_build,
    cited,
    embedder,
    http_ask,
    open_assistant,
    quoted,
    top_cites,
    wait_until,
    workspace,
)


def test_which_changes_count(tmp_path):
    from assistant.watch import relevant

    corpus, index = tmp_path / "corpus", tmp_path / "corpus" / "index"
    (corpus / "guides").mkdir(parents=True)
    yes = ["a.txt", "a.md", "a.html", "a.htm", "a.pdf", "A.PDF", "guides/b.md", "glossary.toml", "gone-folder"]
    no = [".a.txt", ".tmp-123.txt", "_draft.txt", ".git/x.md", "guides/.c.md", "a.txt~", "a.txt.swp", "#a.txt#",
          "a.pdf.part", "a.crdownload", "notes.docx", "guides/glossary.toml", "index/gen-1/documents.jsonl", "x.tmp"]
    for rel in yes:
        assert relevant(corpus / rel, corpus, index), rel
    for rel in no:
        assert not relevant(corpus / rel, corpus, index), rel
    assert not relevant(tmp_path / "elsewhere.txt", corpus, index)


@pytest.fixture
def watched(workspace, embedder):
    """A live server over a private corpus, and a watcher on that corpus (short debounce)."""
    from assistant.app import create_app
    from assistant.watch import Watcher

    reports = []
    watcher = Watcher(workspace, quiet_ms=300, max_wait_ms=3000, embedder=embedder, on_reindex=reports.append)
    with run_server(create_app(assistant=open_assistant(workspace, embedder))) as url, watcher:
        assert watcher.ready.wait(30), "the watcher did not start"
        yield type("Watched", (), {"url": url, "settings": workspace, "watcher": watcher, "reports": reports})()


def _reindexes_settle(w, quiet: float = 1.0) -> int:
    """The watcher's reindex count once nothing has happened for `quiet` seconds."""
    last, since = w.watcher.reindexes, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the watcher never settled"
        time.sleep(0.1)
        if w.watcher.reindexes != last:
            last, since = w.watcher.reindexes, time.monotonic()
    return last


def test_watch_adds_changes_and_removes(watched):
    w = watched
    path = w.settings.corpus_dir / f"{NEW_ID}.txt"
    assert not cited(http_ask(w.url), NEW_ID)

    t0 = time.monotonic()
    path.write_text(NEW_V1, encoding="utf-8")
    wait_until(lambda: top_cites(http_ask(w.url), NEW_ID, OLD_FACT), timeout=20, interval=0.2, what="the added article")
    took = time.monotonic() - t0
    assert took < 10, took

    path.write_text(NEW_V2, encoding="utf-8")
    resp = wait_until(lambda: (r := http_ask(w.url)) and top_cites(r, NEW_ID, NEW_FACT) and r, timeout=20, interval=0.2,
                      what="the changed article")
    assert not quoted(resp, OLD_FACT)

    path.unlink()
    wait_until(lambda: not cited(http_ask(w.url), NEW_ID), timeout=20, interval=0.2, what="the article to be gone")
    assert not cited(http_ask(w.url, "What is the Velmoria cryo-peel made with?"), NEW_ID)
    assert w.watcher.last_error is None
    assert [r.added for r in w.reports if r.added] == [[NEW_ID]]


def test_watch_debounces_a_burst_and_ignores_hidden_and_temp_files(watched):
    w = watched
    corpus = w.settings.corpus_dir
    n0 = _reindexes_settle(w)
    for name in (".draft.txt", "notes.txt~", "notes.txt.swp", "_private.md", "download.pdf.part", "readme.docx"):
        (corpus / name).write_text(NEW_V1, encoding="utf-8")
    (corpus / ".hidden").mkdir()
    (corpus / ".hidden" / "x.txt").write_text(NEW_V1, encoding="utf-8")
    assert _reindexes_settle(w) == n0  # nothing worth a reindex happened

    (corpus / "burst").mkdir()
    for i in range(5):  # a burst of files (a copy of a folder): one reindex
        (corpus / "burst" / f"velmoria-{i}.txt").write_text(NEW_V1.replace("17 minutes", f"{17 + i} minutes"),
                                                            encoding="utf-8")
    wait_until(lambda: w.watcher.reindexes > n0, timeout=20, what="a reindex")
    n1 = _reindexes_settle(w)
    assert n1 - n0 == 1, (n0, n1, [r.added for r in w.reports])
    assert sorted(w.reports[-1].added) == [f"burst/velmoria-{i}" for i in range(5)]


def test_watch_reacts_to_the_glossary(watched):
    w = watched
    n0 = _reindexes_settle(w)
    (w.settings.corpus_dir / "glossary.toml").write_text('[[subject]]\nname = "Lumen sauna"\naliases = ["infrared sauna"]\n')
    wait_until(lambda: w.watcher.reindexes > n0, timeout=20, what="a reindex after the glossary changed")


def test_watch_catches_up_with_changes_made_while_it_was_not_running(workspace, embedder):
    from assistant.watch import Watcher

    (workspace.corpus_dir / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
    ast = open_assistant(workspace, embedder)
    with Watcher(workspace, quiet_ms=300, embedder=embedder) as watcher:
        assert watcher.ready.wait(30)
        assert watcher.last_report is not None and watcher.last_report.added == [NEW_ID]
    wait_until(lambda: top_cites(ast.ask(QUESTION), NEW_ID, OLD_FACT), timeout=15, interval=0.2, what="the new index")


def test_watch_survives_the_corpus_folder_being_removed_and_recreated(workspace, embedder, tmp_path):
    import shutil

    from assistant.watch import Watcher

    ast = open_assistant(workspace, embedder)
    corpus = workspace.corpus_dir
    with Watcher(workspace, quiet_ms=200, embedder=embedder) as watcher:
        assert watcher.ready.wait(30)
        n0 = watcher.reindexes
        shutil.move(str(corpus), str(tmp_path / "moved-away"))  # unmounted, renamed, deleted...
        time.sleep(1.5)
        assert watcher.reindexes == n0  # a vanished folder does not empty the index
        assert top_cites(ast.ask("How long does a Lumen sauna session last?"), "lumen-sauna", "thirty minutes")
        shutil.move(str(tmp_path / "moved-away"), str(corpus))
        (corpus / f"{NEW_ID}.txt").write_text(NEW_V1, encoding="utf-8")
        wait_until(lambda: top_cites(ast.ask(QUESTION), NEW_ID, OLD_FACT), timeout=20, interval=0.2,
                   what="the article added after the folder came back")
    assert watcher.last_report.articles == 4

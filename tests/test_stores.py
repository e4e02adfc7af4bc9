"""What both index backends must do, the same way: the FAISS folder and PostgreSQL + pgvector.

One contract, parametrised over the backends (as Haystack tests its document stores): add,
replace, delete, search, versions, the reindex lock, incremental embedding; and equal answers
on one library. Everything is real: the model, FAISS, a PostgreSQL started by the session.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from assistant import Assistant
from assistant.config import Settings
from assistant.errors import ReindexBusyError
from tests.fixtures_core import (
    COOLING_ID,
    DATA,
    FROSTLEAF_ID,
    GLOWBERRY_ID,
    SHARED_ANSWER,
    SHARED_QUESTION,
    SMALL_CORPUS,
    write_corpus,
)

NEW_ID = "velmoria-cryo-peel"
NEW_ARTICLE = """Velmoria Cryo Peel
The Velmoria cryo peel freezes the outer layer of the skin with liquid argon for ninety seconds.
Each Velmoria session costs about forty euros and is repeated every six weeks.
"""
NEW_QUESTION = "How long does the Velmoria cryo peel freeze the skin?"
NEW_ANSWER = "ninety seconds"


class Backend:
    """One backend behind the same steps: change the corpus folder, reindex, ask, hold the lock."""

    def __init__(self, kind: str, settings: Settings) -> None:
        self.kind, self.settings = kind, settings
        self.assistant = Assistant(settings)

    @property
    def corpus(self) -> Path:
        return Path(self.settings.corpus_dir)

    def write(self, rel: str, text: str) -> None:
        write_corpus(self.corpus, {rel: text})

    def reindex(self):
        return self.assistant.reindex(lock_timeout=30)

    def reader(self) -> Assistant:
        """Another Assistant on the same store (another worker, another replica)."""
        return Assistant(self.settings)

    def generation(self, a: Assistant | None = None) -> str | None:
        return (a or self.assistant)._current().generation

    @contextlib.contextmanager
    def hold_lock(self):
        if self.kind == "folder":
            from assistant.reindex import reindex_lock

            with reindex_lock(self.settings.index_dir, timeout=0):
                yield
        else:
            from assistant import pgstore

            with pgstore.reindex_lock(pgstore.database(self.settings), timeout=0):
                yield


@pytest.fixture(params=["folder", "postgres"])
def backend(request, tmp_path, embedder) -> Backend:
    if request.param == "folder":
        s = Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index")
    else:
        s = request.getfixturevalue("pg_settings")
    write_corpus(s.corpus_dir, SMALL_CORPUS)
    b = Backend(request.param, s)
    b.reindex()
    return b


def top(a: Assistant, question: str) -> tuple[str | None, str]:
    res = a.ask(question, top_k=3)
    if res.abstained or not res.answers:
        return None, ""
    return res.answers[0].source.doc_id, res.answers[0].text


def cited(a: Assistant, question: str, doc_id: str) -> bool:
    res = a.ask(question, top_k=10)
    return any(x.source.doc_id == doc_id or any(o.doc_id == doc_id for o in x.also_in) for x in res.answers)


def test_search_answers_from_the_library(backend):
    doc, text = top(backend.assistant, SHARED_QUESTION)
    assert doc in (FROSTLEAF_ID, COOLING_ID) and SHARED_ANSWER in text
    doc, text = top(backend.assistant, "How often is a glowberry peel session repeated?")
    assert doc == GLOWBERRY_ID and "every four weeks" in text
    assert backend.assistant.ask("What is the capital of France?").abstained
    assert {d.doc_id for d in backend.assistant.documents()} == {FROSTLEAF_ID, COOLING_ID, GLOWBERRY_ID}


def test_add_embeds_only_the_new_article_and_it_is_answered(backend):
    assert top(backend.assistant, NEW_QUESTION)[0] != NEW_ID
    backend.write(f"{NEW_ID}.txt", NEW_ARTICLE)
    report = backend.reindex()
    assert report.added == [NEW_ID] and report.unchanged == 3 and not report.changed and not report.removed
    assert report.embedded_passages == 1
    doc, text = top(backend.assistant, NEW_QUESTION)
    assert doc == NEW_ID and NEW_ANSWER in text
    view = backend.assistant.document(NEW_ID)
    assert view.text.startswith("Velmoria Cryo Peel") and view.title == "Velmoria Cryo Peel"


def test_replace_serves_the_new_text_only(backend):
    changed = SMALL_CORPUS[f"{GLOWBERRY_ID}.txt"].replace("every four weeks", "every nine days")
    backend.write(f"{GLOWBERRY_ID}.txt", changed)
    report = backend.reindex()
    assert report.changed == [GLOWBERRY_ID] and report.unchanged == 2 and report.embedded_passages >= 1
    doc, text = top(backend.assistant, "How often is a glowberry peel session repeated?")
    assert doc == GLOWBERRY_ID and "every nine days" in text
    assert "every four weeks" not in backend.assistant.document(GLOWBERRY_ID).text


def test_delete_is_never_cited_again(backend):
    assert cited(backend.assistant, "How often is a glowberry peel session repeated?", GLOWBERRY_ID)
    (backend.corpus / f"{GLOWBERRY_ID}.txt").unlink()
    report = backend.reindex()
    assert report.removed == [GLOWBERRY_ID] and report.embedded_passages == 0
    assert not cited(backend.assistant, "How often is a glowberry peel session repeated?", GLOWBERRY_ID)
    assert GLOWBERRY_ID not in {d.doc_id for d in backend.assistant.documents()}


def test_versions_change_only_with_the_library_and_readers_follow(backend):
    reader = backend.reader()
    first = backend.generation(reader)
    assert backend.reindex().touched is False
    assert backend.generation() == first  # nothing changed: no new version
    backend.write(f"{NEW_ID}.txt", NEW_ARTICLE)
    backend.reindex()
    newer = backend.generation()
    assert newer > first
    # the reader answers from the old version until it sees the new one (polling), then switches
    deadline = time.monotonic() + 15
    while backend.generation(reader) != newer:
        assert time.monotonic() < deadline, "the reader never switched to the new version"
        reader.ask(SHARED_QUESTION)  # answering goes on meanwhile
        time.sleep(0.2)
    assert top(reader, NEW_QUESTION)[0] == NEW_ID


def test_one_reindex_at_a_time(backend):
    with backend.hold_lock():
        with pytest.raises(ReindexBusyError, match="Another reindex"):
            backend.assistant.reindex(lock_timeout=0)
    assert backend.reindex().touched is False  # released: the next one runs


def test_both_backends_answer_the_seed_questions_identically(seed_assistant, pg_settings):
    """The seed library in Postgres, moved from the FAISS folder (its vectors reused: nothing is
    embedded), answers every seed question exactly as the FAISS backend does."""
    s = replace(pg_settings, corpus_dir=seed_assistant.settings.corpus_dir, index_dir=seed_assistant.settings.index_dir)
    pg = Assistant(s)
    report = pg.reindex()
    assert report.embedded_passages == 0 and len(report.added) == len(seed_assistant.documents())
    questions = [json.loads(line)["turns"][0]["q"] for line in (DATA / "seed_questions.jsonl").read_text().splitlines() if line.strip()]
    questions += ["Does it hurt?", "What is the capital of France?"]
    assert len(questions) >= 20
    for q in questions:
        assert pg.ask(q, top_k=5).model_dump() == seed_assistant.ask(q, top_k=5).model_dump(), q
    follow = pg.ask("Does it hurt?", history=["What is microneedling?"]).model_dump()
    assert follow == seed_assistant.ask("Does it hurt?", history=["What is microneedling?"]).model_dump()


def test_a_reader_gets_the_subjects_and_citations_found_at_build_time(backend):
    """The discovery a build makes travels with the generation (subjects.json) or the database
    version: a reader loading it gets the same subjects a fresh discovery finds, without
    discovering them itself, and the articles' citation metadata with them."""
    from assistant import subjects as sj

    title, body = NEW_ARTICLE.split("\n", 1)
    first = "a-velmoria"  # sorts before the others: the build appends its passage, a version lists it first
    backend.write(f"{first}.md", f"---\ntitle: {title}\nauthor: Jane Doe\ndate: 2023-03-12\n---\n{body}")
    backend.reindex()
    idx = backend.reader()._current().index
    assert idx.docs[first].author == "Jane Doe" and idx.docs[first].published
    saved = sj.saved_json(idx.path) if backend.kind == "folder" else idx.saved_subjects
    assert saved is not None and saved["subjects"]
    fresh = sj.build(idx, sj.load_glossary(backend.corpus / sj.GLOSSARY_NAME))
    assert [(s["name"], sorted(s["rows"])) for s in saved["subjects"]] == [(s.name, sorted(s.rows.tolist()))
                                                                           for s in fresh.subjects]
    served = sj.for_index(idx, backend.corpus)
    assert [(s.name, sorted(s.rows.tolist())) for s in served.subjects] == [(s.name, sorted(s.rows.tolist()))
                                                                           for s in fresh.subjects]
    assert served.body == fresh.body and served.heading == fresh.heading
    assert idx.docs == backend.assistant._current().index.docs


@pytest.mark.parametrize("kind", ["folder", "postgres"])
def test_float32_passages_are_served_as_stored_and_converted_by_a_changing_reindex(request, tmp_path, embedder,
                                                                                  monkeypatch, kind):
    """A library built with float32 passage vectors keeps them when the setting becomes float16:
    a reader loads float32 (the file's dtype, or the version's manifest) and answers as before;
    the first reindex that changes the library writes the passage level in float16 whole."""
    from assistant import index as ix

    monkeypatch.setattr(ix, "PASSAGE_DTYPE", "float32")
    if kind == "folder":
        s = Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index")
    else:
        s = request.getfixturevalue("pg_settings")
    write_corpus(s.corpus_dir, SMALL_CORPUS)
    b = Backend(kind, s)
    b.reindex()
    want = top(b.reader(), SHARED_QUESTION)
    assert want[0] in (FROSTLEAF_ID, COOLING_ID) and SHARED_ANSWER in want[1]

    monkeypatch.setattr(ix, "PASSAGE_DTYPE", "float16")
    reader = b.reader()
    idx = reader._current().index
    assert idx.passage_store.dtype == "float32" and idx.manifest["vector_search"]["passages"]["dtype"] == "float32"
    assert top(reader, SHARED_QUESTION) == want
    assert b.reindex().touched is False  # nothing changed: nothing converted

    b.write(f"{NEW_ID}.txt", NEW_ARTICLE)
    b.reindex()
    reader = b.reader()
    idx = reader._current().index
    assert idx.passage_store.dtype == "float16" and idx.manifest["vector_search"]["passages"]["dtype"] == "float16"
    assert np.asarray(idx.passage_vectors).dtype == np.float16
    assert top(reader, SHARED_QUESTION) == want
    doc, text = top(reader, NEW_QUESTION)
    assert doc == NEW_ID and NEW_ANSWER in text

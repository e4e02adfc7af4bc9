"""The index on disk: build, load, manifest, generations written under a temp name and renamed,
crash safety, incremental reindex, skipped files, and the error before any index exists.

Real model, real FAISS, real BM25; small corpora written into tmp_path."""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from assistant import Assistant, Settings
from assistant import index as ix
from assistant.chunking import chunk
from assistant.config import MODEL_NAME
from assistant.documents import read_document
from assistant.errors import NotIndexedError
from tests.fixtures_core import GLOWBERRY_ID, SMALL_CORPUS, open_assistant, write_corpus

QUESTION = "How long does a glowberry peel session take?"
ANSWER = "about twenty minutes"


def answers(res) -> list[tuple]:
    return [(a.source.doc_id, a.source.start, a.source.end, a.text) for a in res.answers]


@pytest.fixture
def built(small_corpus, tmp_path, embedder):
    """(Assistant, corpus folder, index folder) over a fresh copy of the small corpus."""
    index = tmp_path / "index"
    return open_assistant(small_corpus, index), small_corpus, index


# --- build and load ----------------------------------------------------------------------------

def test_loaded_index_holds_exactly_the_chunked_articles(built, embedder):
    a, corpus, index = built
    loaded = ix.load(index)
    s = a.settings
    expected = []
    for rel in sorted(SMALL_CORPUS):
        doc = read_document(corpus / rel, corpus)
        rec = loaded.docs[doc.doc_id]
        assert (rec.title, rec.path, rec.text, rec.sha256) == (doc.title, doc.path, doc.text, doc.sha256)
        ps = chunk(doc, s.passage_target_words, s.passage_max_words)
        assert rec.n_passages == len(ps)
        expected += ps
    assert set(loaded.docs) == {"frostleaf-basics", "guides/cooling-masks", "glowberry-peel"}
    key = lambda p: (p.doc_id, p.start)  # noqa: E731
    got = sorted(loaded.passages, key=key)
    assert [(p.id, p.doc_id, p.start, p.end, p.text, p.sentences, p.heading) for p in got] == [
        (p.id, p.doc_id, p.start, p.end, p.text, p.sentences, p.heading) for p in sorted(expected, key=key)
    ]
    # rows line up: stores, vectors, sentence -> passage map
    n_p, n_s = len(loaded.passages), sum(len(p.sentences) for p in loaded.passages)
    assert len(loaded.passage_store) == n_p and len(loaded.sentence_store) == n_s
    assert loaded.passage_vectors.shape == (n_p, embedder.dim)
    assert loaded.sent_vectors.shape == (n_s, embedder.dim)
    assert loaded.sent_passage.tolist() == [i for i, p in enumerate(loaded.passages) for _ in p.sentences]
    assert np.allclose(np.linalg.norm(loaded.passage_vectors, axis=1), 1.0, atol=1e-4)
    # each stored vector is the embedding of its own passage / sentence, and FAISS finds it by row
    for row in (0, n_p - 1):
        p = loaded.passages[row]
        d = loaded.docs[p.doc_id]
        fresh = embedder.encode_passages([ix.passage_embed_text(p, d.title, d.text)])[0]
        assert float(fresh @ loaded.passage_vectors[row]) > 0.999
        rows, _ = loaded.passage_store.search(loaded.passage_vectors[row], 1)
        assert int(rows[0]) == row and loaded.row_of_pid[ix.int_id(p.id)] == row
        a_, _b = loaded.sent_rows[row]
        s0 = ix.sentence_embed_text(p, p.sentences[0], d.text)
        assert float(embedder.encode_passages([s0])[0] @ loaded.sent_vectors[a_].astype(np.float32)) > 0.999
        assert loaded.sentence_text(a_) == d.text[p.sentences[0].start : p.sentences[0].end]


def test_manifest_and_layout(built, embedder):
    a, corpus, index = built
    gen = ix.current_generation(index)
    assert gen is not None and re.fullmatch(r"gen-\d{8}T\d{6}\d*Z", gen.name)
    assert (index / "CURRENT").read_text().strip() == gen.name
    assert not list(index.glob(".tmp-gen-*")) and not list(index.glob(".CURRENT.*"))
    m = json.loads((gen / "manifest.json").read_text())
    assert m["model"] == MODEL_NAME
    assert m["dimension"] == embedder.dim == 384
    loaded = ix.load(index)
    assert re.fullmatch(r"[0-9a-f]{64}", m["corpus_fingerprint"])
    assert m["corpus_fingerprint"] == ix.corpus_fingerprint(loaded.docs)
    built_at = datetime.fromisoformat(m["built_at"])
    assert built_at.tzinfo is not None
    assert abs(datetime.now(timezone.utc) - built_at) < timedelta(minutes=10)
    assert m["articles"] == 3 and m["passages"] == len(loaded.passages)
    for name in ("documents.jsonl", "passages.jsonl", "passages.faiss", "sentences.faiss", "sentence_passage.npy"):
        assert (gen / name).is_file(), name
    # each vector is stored once (in its store), and the choice of search is recorded
    assert not list(gen.glob("*_vectors.npy"))
    vs = m["vector_search"]
    assert vs["passages"] == {"kind": "flat", "dtype": "float32", "vectors": len(loaded.passages)}
    assert vs["sentences"] == {"kind": "flat", "dtype": ix.SENTENCE_DTYPE, "vectors": len(loaded.sent_passage)}
    assert vs["ann_min_vectors"] == ix.ANN_MIN_VECTORS



def test_queries_encode_alike_one_by_one_and_in_a_batch(embedder):
    """A comparison encodes its question and its aspect in one batch: padding must not move them."""
    texts = ["Which is safer, PRP or mesotherapy?", "Which is safer?", "How long does a glowberry peel session take?"]
    batch = embedder.encode_queries(texts)
    assert batch.shape == (3, embedder.dim) and batch.dtype == np.float32
    for text, v in zip(texts, batch):
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
        assert float(embedder.encode_query(text) @ v) > 0.9999

def test_corpus_fingerprint_follows_the_corpus(built):
    a, corpus, index = built
    first = ix.load(index).manifest["corpus_fingerprint"]
    report = a.reindex()
    assert not report.touched and report.unchanged == 3
    assert ix.load(index).manifest["corpus_fingerprint"] == first
    (corpus / f"{GLOWBERRY_ID}.txt").write_text(SMALL_CORPUS[f"{GLOWBERRY_ID}.txt"] + "It is safe for most skin types.\n")
    a.reindex()
    assert ix.load(index).manifest["corpus_fingerprint"] != first


# --- crash safety ------------------------------------------------------------------------------

def _crash_on_second_call(monkeypatch, owner, name: str, calls: list):
    original = getattr(owner, name)

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) >= 2:
            raise OSError("No space left on device (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


@pytest.mark.parametrize("where", ["faiss", "npy"])
def test_crash_half_way_through_a_rebuild_keeps_the_previous_index(built, monkeypatch, where):
    a, corpus, index = built
    settings = a.settings
    before = a.ask(QUESTION)
    assert not before.abstained and ANSWER in before.answers[0].text
    gen1 = ix.current_generation(index)

    (corpus / f"{GLOWBERRY_ID}.txt").write_text(SMALL_CORPUS[f"{GLOWBERRY_ID}.txt"] + "It is safe for most skin types.\n")
    calls: list = []
    if where == "faiss":
        _crash_on_second_call(monkeypatch, ix.FaissStore, "save", calls)
    else:
        _crash_on_second_call(monkeypatch, ix.np, "save", calls)
    with pytest.raises(OSError, match="simulated"):
        a.reindex()
    monkeypatch.undo()

    # files were being written under a temp name, never into a served generation
    first_path = Path(calls[0][-2] if where == "npy" else calls[0][-1])
    assert first_path.parent.name.startswith(".tmp-gen-"), first_path
    leftovers = list(index.glob(".tmp-gen-*"))
    assert len(leftovers) == 1 and not (leftovers[0] / "manifest.json").exists()
    assert ix.current_generation(index) == gen1
    # the previous index still loads and answers the same question the same way
    assert [g.name for g in index.glob("gen-*")] == [gen1.name]
    reopened = Assistant.open(settings=Settings(corpus_dir=settings.corpus_dir, index_dir=settings.index_dir))
    assert answers(reopened.ask(QUESTION)) == answers(before)
    assert answers(a.ask(QUESTION)) == answers(before)

    # the next reindex (lock released: no waiting) completes and clears the leftover
    report = a.reindex(lock_timeout=0)
    assert report.changed == [GLOWBERRY_ID] and report.unchanged == 2
    assert not list(index.glob(".tmp-gen-*"))
    gen2 = ix.current_generation(index)
    assert gen2 is not None and gen2 != gen1
    assert "It is safe for most skin types." in ix.load(index).docs[GLOWBERRY_ID].text


def test_generation_without_manifest_is_never_served(tmp_path):
    index = tmp_path / "index"
    half = index / "gen-20990101T000000000000Z"
    half.mkdir(parents=True)
    (half / "documents.jsonl").write_text("")
    (index / "CURRENT").write_text(half.name + "\n")
    assert ix.current_generation(index) is None
    with pytest.raises(NotIndexedError):
        ix.load(index)


def test_old_generations_pruned_current_kept(built):
    a, corpus, index = built
    target = corpus / f"{GLOWBERRY_ID}.txt"
    for i in range(3):
        target.write_text(SMALL_CORPUS[f"{GLOWBERRY_ID}.txt"] + f"Extra sentence number {i} about the peel.\n")
        a.reindex()
    gens = sorted(g.name for g in index.glob("gen-*"))
    assert len(gens) == 2
    assert ix.current_generation(index).name == gens[-1]
    assert "Extra sentence number 2" in ix.load(index).docs[GLOWBERRY_ID].text


# --- incremental reindex -----------------------------------------------------------------------

def test_reindex_embeds_only_what_changed_and_drops_what_left(built):
    a, corpus, index = built
    old = ix.load(index)
    old_rows = {p.id: i for i, p in enumerate(old.passages)}
    (corpus / f"{GLOWBERRY_ID}.txt").write_text(SMALL_CORPUS[f"{GLOWBERRY_ID}.txt"] + "It is safe for most skin types.\n")
    (corpus / "frostleaf-basics.txt").unlink()
    report = a.reindex()
    assert report.changed == [GLOWBERRY_ID] and report.removed == ["frostleaf-basics"] and report.added == []
    assert report.unchanged == 1
    new = ix.load(index)
    assert set(new.docs) == {"guides/cooling-masks", GLOWBERRY_ID}
    assert report.embedded_passages == sum(1 for p in new.passages if p.doc_id == GLOWBERRY_ID)
    assert not any(p.doc_id == "frostleaf-basics" for p in new.passages)
    assert len(new.passage_store) == len(new.passages)
    assert len(new.sentence_store) == len(new.sent_passage)
    # kept passages keep their vectors, on their new rows
    for i, p in enumerate(new.passages):
        if p.doc_id == "guides/cooling-masks":
            assert np.array_equal(new.passage_vectors[i], old.passage_vectors[old_rows[p.id]])
    # the store's rows are the new index's rows
    for i, p in enumerate(new.passages):
        rows, _ = new.passage_store.search(new.passage_vectors[i], len(new.passages))
        assert sorted(rows.tolist()) == list(range(len(new.passages))) and int(rows[0]) == i
    # and the removed article is no longer cited
    res = a.ask("What is the frostleaf mask made from?")
    assert all(x.source.doc_id != "frostleaf-basics" for x in res.answers)
    assert all(y.doc_id != "frostleaf-basics" for x in res.answers for y in x.also_in)


def test_unreadable_files_skipped_with_a_warning_others_indexed(tmp_path, caplog, embedder):
    corpus = write_corpus(tmp_path / "corpus", {
        **SMALL_CORPUS,
        "broken.txt": b"\xff\xfe not utf-8 \x80",
        "empty.md": "",
        "same-name.md": "# Same Name\n\nThe glowberry peel takes twenty minutes.\n",
        "same-name.txt": "Same Name Text\nThe glowberry peel takes twenty minutes.\n",
    })
    a = open_assistant(corpus, tmp_path / "index", build=False)
    with caplog.at_level(logging.WARNING, logger="assistant"):
        report = a.reindex()
    assert sorted(report.skipped) == ["broken.txt", "empty.md", "same-name.txt"]
    assert sorted(report.added) == ["frostleaf-basics", "glowberry-peel", "guides/cooling-masks", "same-name"]
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for name in ("broken.txt", "empty.md", "same-name.txt"):
        assert any(name in m for m in msgs), (name, msgs)
    assert {d.doc_id for d in a.documents()} == set(report.added)


# --- before any index --------------------------------------------------------------------------

def test_not_indexed_error_says_how_to_build_one(tmp_path, embedder):
    corpus = write_corpus(tmp_path / "corpus", SMALL_CORPUS)
    index = tmp_path / "index"
    with pytest.raises(NotIndexedError, match="assistant reindex"):
        ix.load(index)
    settings = Settings(corpus_dir=corpus, index_dir=index)
    with pytest.raises(NotIndexedError, match="assistant reindex"):
        Assistant.open(settings=settings)
    a = Assistant.open(settings=settings, require_index=False)
    with pytest.raises(NotIndexedError, match="assistant reindex") as e:
        a.ask(QUESTION)
    assert str(index) in str(e.value)
    h = a.health()
    assert (h.status, h.index_loaded, h.articles) == ("no index", False, 0)
    # the same object answers once an index exists
    a.reindex()
    assert ANSWER in a.ask(QUESTION).answers[0].text
    assert a.health().index_loaded and a.health().articles == 3

"""The index on disk: build, load, manifest, generations written under a temp name and renamed,
crash safety, incremental reindex, skipped files, and the error before any index exists.

Real model, real FAISS, real BM25; small corpora written into tmp_path."""
from __future__ import annotations

import gc
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
    tol = 1e-4 if ix.PASSAGE_DTYPE == "float32" else 1e-3  # float16: 11 bits of mantissa
    assert np.allclose(np.linalg.norm(np.asarray(loaded.passage_vectors, np.float32), axis=1), 1.0, atol=tol)
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
    for name in ("articles.json", "passage_doc.npy", "passage_pos.npy", "sentence_heading.npy", "passages.faiss",
                 "sentences.faiss", "sentence_passage.npy", "article_centroids.npy", "passage_centroid.npy"):
        assert (gen / name).is_file(), name
    # each vector is stored once (in its store), and the choice of search is recorded
    assert not list(gen.glob("*_vectors.npy"))
    assert len(list(gen.glob("articles-*.rec"))) == 1  # the records, in one segment
    vs = m["vector_search"]
    assert vs["passages"] == {"kind": "flat", "dtype": ix.PASSAGE_DTYPE, "vectors": len(loaded.passages)}
    assert vs["sentences"] == {"kind": "flat", "dtype": ix.level_dtype("flat", ix.SENTENCE_DTYPE),
                               "vectors": len(loaded.sent_passage)}
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


# --- scale: top-k selection, BM25 of candidates only, HNSW, build-time subjects ----------------

def test_topk_is_the_head_of_a_full_sort():
    rng = np.random.default_rng(7)
    for n, k in ((1, 1), (10, 3), (1000, 50), (1000, 1000), (5, 9)):
        x = rng.standard_normal(n).astype(np.float32)
        x[rng.integers(0, n, size=n // 3)] = 0.0  # ties
        assert ix.topk(x, k).tolist() == np.argsort(-x, kind="stable")[:k].tolist()
    assert ix.topk(np.zeros(0, np.float32), 5).size == 0


def test_bm25_of_some_rows_equals_the_full_scores_at_those_rows(small_assistant):
    index = small_assistant._current().index
    n_p, n_s = len(index.passages), len(index.sent_passage)
    rng = np.random.default_rng(3)
    for q in ("How long does the frostleaf mask stay on?", "glowberry peel peel sessions", "zzz unknownword", ""):
        toks = ix.tokenize([q])[0] if q else []
        for retriever, n in ((index.bm25_passages, n_p), (index.bm25_sentences, n_s)):
            full = ix.bm25_scores(retriever, toks, n)
            rows = rng.choice(n, size=min(n, 7), replace=False)
            rows = np.concatenate([rows, rows[:2]])  # repeated rows too
            assert np.array_equal(ix.bm25_scores_for(retriever, toks, rows), full[rows])
            got_rows, got = ix.bm25_topk(retriever, toks, n, 5)
            head = np.argsort(-full, kind="stable")[:5]
            assert got_rows.tolist() == head[full[head] > 0].tolist()  # rows that score, only
            assert np.array_equal(got, full[got_rows])


def test_bm25_topk_from_postings_is_the_head_of_the_full_scores():
    """Many rows, repeated and common query words, ties at the boundary, a scratch array reused
    across calls and left zeroed: the sparse top-k equals the head of the full scores."""
    rng = np.random.default_rng(11)
    vocab = [f"w{i}" for i in range(40)]
    p = np.linspace(1, 0.02, len(vocab))  # a few common words, many rare ones
    rows = [list(rng.choice(vocab, size=int(rng.integers(1, 12)), p=p / p.sum())) for _ in range(3000)]
    rows += [["w39", "w38"]] * 30  # identical rows: tied scores
    # bm25s's own arrays (older generations), and segments with tombstones and a delta; the
    # removed rows would be the best for some queries, and outnumber some queries' entries
    removed = [["w39", "w38", "w39"]] * 50 + [["w0", "w1", "w20", "w0"]] * 50 + [["w5"]] * 500
    segments = ix.BM25Level.from_tokens(removed + rows[:2000]).keep(np.arange(600, 2600)).extend(rows[2000:])
    assert len(segments.dead) == 600
    scored = ix._bm25s_from_tokens(rows)
    for retriever in (scored, segments):
        _topk_is_the_head(retriever, rows, vocab, rng)
    for q in (["w0", "w1", "w0", "w20"], vocab):
        assert np.array_equal(ix.bm25_scores(segments, q, len(rows)), ix.bm25_scores(scored, q, len(rows)))


def _topk_is_the_head(retriever, rows, vocab, rng) -> None:
    n = len(rows)
    assert retriever.n_rows == n
    for q in (["w0"], ["w39", "w38"], ["w0", "w1", "w0", "w20"], ["w5", "nosuchword", "w30"], vocab[:25]):
        full = ix.bm25_scores(retriever, q, n)
        for k in (1, 7, 50, 400, 5000):
            got_rows, got = ix.bm25_topk(retriever, q, n, k)
            head = np.argsort(-full, kind="stable")[:k]
            assert got_rows.tolist() == head[full[head] > 0].tolist(), (q, k)
            assert np.array_equal(got, full[got_rows])
        for size in (1, 30, 2500):  # few rows: common words are looked up from the rows' side
            some = np.concatenate([rng.choice(n, size=size, replace=False), [0, n - 1, 0]])
            assert np.array_equal(ix.bm25_scores_for(retriever, q, some), full[some]), (q, size)
        assert ix._SCRATCH[n] and not any(b.any() for b in ix._SCRATCH[n])  # zeroed again, back in the pool
    assert ix.bm25_topk(retriever, ["nosuchword"], n, 5)[0].size == 0


def test_bm25_scratch_arrays_are_lent_one_per_borrower_and_reused():
    """Questions answered at once (a server's threads) never share a scratch array; a returned
    one is lent again instead of a new one being made."""
    with ix._scratch(10) as a, ix._scratch(10) as b:
        assert a is not b
    with ix._scratch(10) as c:
        assert c is a or c is b


def test_vector_stores_flat_and_hnsw_hold_each_vector_once_by_row(small_assistant, tmp_path):
    index = small_assistant._current().index
    vecs = np.asarray(index.sent_vectors, dtype=np.float32)
    flat = ix.FaissStore.build(vecs, "flat", "float32")
    for dtype in ("float32", "float16"):
        h = ix.FaissStore.build(vecs, "hnsw", dtype)
        assert h.describe()["kind"] == "hnsw" and len(h) == len(vecs)
        h.save(tmp_path / f"h-{dtype}.faiss")
        loaded = ix.FaissStore.load(tmp_path / f"h-{dtype}.faiss")  # memory-mapped codes
        m = loaded.matrix()
        assert m.dtype == ix.DTYPES[dtype] and m.shape == vecs.shape
        view = ix.FaissStore.load(tmp_path / f"h-{dtype}.faiss").matrix()  # the view outlives its store
        gc.collect()
        np.testing.assert_array_equal(view, m)
        np.testing.assert_allclose(m.astype(np.float32), vecs, atol=1e-3)
        for row in (0, len(vecs) // 2, len(vecs) - 1):
            q = vecs[row]
            want, _ = flat.search(q, 10)
            got, scores = loaded.search(q, 10)
            assert got.tolist() == want.tolist()  # a graph this small is searched exhaustively
            assert got[0] == row and abs(scores[0] - 1.0) < 2e-3
            ex, _ = loaded.exact_search(q, 10)
            assert ex.tolist() == want.tolist()
    assert ix.choose_kind(ix.ANN_MIN_VECTORS - 1) == "flat" and ix.choose_kind(ix.ANN_MIN_VECTORS) == "ivf"
    assert ix.choose_kind(ix.ANN_MIN_VECTORS, "passages") == "pq" and ix.ANN_KIND is None


@pytest.mark.parametrize("kind", ["pq", "ivf", "hnsw"])
def test_above_the_threshold_ann_is_chosen_recorded_extended_and_answers_alike(tmp_path, embedder, monkeypatch, kind):
    exact_corpus = write_corpus(tmp_path / "c1", SMALL_CORPUS)
    exact = open_assistant(exact_corpus, tmp_path / "i1")
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 1)
    monkeypatch.setattr(ix, "ANN_KIND", kind)
    corpus = write_corpus(tmp_path / "c2", SMALL_CORPUS)
    ann = open_assistant(corpus, tmp_path / "i2")
    m = ann._current().index.manifest["vector_search"]
    assert m["passages"]["kind"] == m["sentences"]["kind"] == kind and m["ann_min_vectors"] == 1
    assert m["sentences"]["dtype"] == ix.level_dtype(kind, ix.SENTENCE_DTYPE)
    if kind == "hnsw":
        assert m["passages"]["M"] == ix.HNSW_M
    elif kind == "pq":
        assert m["passages"]["rescored"] == ix.PQ_RESCORE and m["passages"]["code_bytes"] == 48
    else:
        assert m["passages"]["nprobe"] == ix.IVF_NPROBE and m["passages"]["nlist"] >= 1
    for q in (QUESTION, "How long should the frostleaf mask stay on the skin?", "What is the frostleaf mask made from?"):
        assert answers(ann.ask(q)) == answers(exact.ask(q))
    # adding an article extends the approximate stores (rows appended), it does not rebuild them
    created = []
    real_create = ix.FaissStore.create.__func__
    monkeypatch.setattr(ix.FaissStore, "create", classmethod(lambda cls, *a, **k: created.append(a) or real_create(cls, *a, **k)))
    sunmoss = "Sunmoss Oil\nSunmoss oil is pressed from the seeds of the sunmoss fern.\nA sunmoss massage lasts forty-five minutes.\n"
    (corpus / "sunmoss.txt").write_text(sunmoss)
    report = ann.reindex()
    assert report.added == ["sunmoss"] and created == []
    res = ann.ask("How long does a sunmoss massage last?")
    assert "forty-five minutes" in res.answers[0].text
    monkeypatch.undo()
    (exact_corpus / "sunmoss.txt").write_text(sunmoss)
    exact.reindex()
    assert answers(ann.ask(QUESTION)) == answers(exact.ask(QUESTION))


def test_subjects_are_discovered_at_build_time_and_read_by_servers(tmp_path, embedder, monkeypatch):
    from assistant import subjects as sj
    from tests.fixtures_core import copy_seed_corpus

    corpus = copy_seed_corpus(tmp_path / "corpus")
    a = open_assistant(corpus, tmp_path / "index")
    gen = ix.current_generation(tmp_path / "index")
    saved = json.loads((gen / sj.SAVED_NAME).read_text())
    built_now = sj.build(ix.load(tmp_path / "index"))
    assert [s["name"] for s in saved["subjects"]] == [s.name for s in built_now.subjects]
    assert len(saved["subjects"]) >= 3
    # a serving process never discovers: it reads what the build stored
    monkeypatch.setattr(sj, "build", lambda *a, **k: (_ for _ in ()).throw(AssertionError("discovered on a question")))
    fresh = Assistant.open(settings=a.settings)
    got = sj.for_index(fresh._current().index, corpus)
    assert [(s.name, s.aliases, s.rows.tolist()) for s in got.subjects] == [
        (s.name, s.aliases, s.rows.tolist()) for s in built_now.subjects]
    assert got.body == built_now.body and got.heading == built_now.heading
    res = fresh.ask("Compare PRP and microneedling downtime")
    assert {x.about for x in res.answers if x.about} and not res.abstained
    monkeypatch.undo()
    # an edited glossary: a no-op reindex rediscovers into the served generation
    (corpus / sj.GLOSSARY_NAME).write_text('[[subject]]\nname = "Collagen induction"\naliases = ["microneedling"]\n')
    report = a.reindex()
    assert not report.touched
    saved = json.loads((gen / sj.SAVED_NAME).read_text())
    assert saved["glossary"] == sj.glossary_hash(corpus / sj.GLOSSARY_NAME)
    assert "Collagen induction" in [s["name"] for s in saved["subjects"]]


def test_a_subject_naming_too_much_of_the_library_is_dropped(seed_assistant, monkeypatch):
    from assistant import subjects as sj

    index = seed_assistant._current().index
    full = sj.build(index)
    biggest = max(full.subjects, key=lambda s: len(s.rows))
    monkeypatch.setattr(sj, "MAX_ROWS_FLOOR", len(biggest.rows) - 1)
    capped = sj.build(index)
    assert biggest.name not in [s.name for s in capped.subjects]
    assert all(len(s.rows) <= len(biggest.rows) - 1 for s in capped.subjects)
    # a glossary subject is kept whatever its size
    glossary = {"subject": [{"name": biggest.name, "aliases": biggest.aliases[:1]}], "ignore": {"aliases": [], "subjects": []}}
    assert biggest.name in [s.name for s in sj.build(index, glossary).subjects]


def test_a_no_op_reindex_does_not_load_the_index(built, monkeypatch):
    a, corpus, index = built
    monkeypatch.setattr(ix, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded the whole index")))
    monkeypatch.setattr(ix, "load_tokens", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded the tokens")))
    from assistant.reindex import reindex

    report = reindex(a.settings, a.embedder)
    assert not report.touched and report.unchanged == 3 and report.passages > 0


def test_tokenize_gives_bm25s_tokens_without_its_progress_bars(monkeypatch):
    import bm25s
    import Stemmer

    from tests.fixtures_core import SEED_CORPUS

    texts = [line for f in sorted(SEED_CORPUS.glob("*.txt")) for line in f.read_text(encoding="utf-8").splitlines()]
    texts += ["", "a", "Micro-needling vs. PRP: what's the DIFFERENCE?", "naïve café résumé 2024 x2", "the and of"]
    want = bm25s.tokenize([ix._catenate(t) if "-" in t else t for t in texts], stopwords=ix._stopwords(),
                          stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False)
    import tqdm as tqdm_mod

    monkeypatch.setattr(tqdm_mod, "tqdm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a progress bar")))
    assert ix.tokenize(texts) == want
    assert ix.tokenize(["micro-needling"]) == [["micro", "needl", "microneedl"]]


def test_a_small_change_to_a_large_library_carries_the_discovery_over(tmp_path, embedder, monkeypatch):
    from assistant import subjects as sj
    from tests.fixtures_core import copy_seed_corpus

    monkeypatch.setattr(sj, "INCREMENTAL_MIN_PASSAGES", 1)  # the seed corpus plays a large library
    monkeypatch.setattr(sj, "REDISCOVER_SHARE", 1.0)
    corpus = copy_seed_corpus(tmp_path / "corpus")
    a = open_assistant(corpus, tmp_path / "index")
    (corpus / "aftercare.txt").write_text(
        "Aftercare Notes\nAfter microneedling, avoid direct sun for a week and use a gentle cleanser. "
        "After PRP injections, mild swelling at the injection sites usually settles within two days.\n")
    calls = []
    real_build = sj.build
    monkeypatch.setattr(sj, "build", lambda *x, **k: calls.append(1) or real_build(*x, **k))
    assert a.reindex().added == ["aftercare"]
    assert calls == []  # no discovery ran
    gen = ix.current_generation(tmp_path / "index")
    saved = json.loads((gen / sj.SAVED_NAME).read_text())
    new = ix.load(tmp_path / "index")
    assert saved["changed_since_discovery"] == sum(1 for p in new.passages if p.doc_id == "aftercare") > 0
    full = real_build(new)
    carried = sj.for_index(new, corpus)
    same = {s.name: s for s in full.subjects}
    checked = 0
    for s in carried.subjects:
        f = same.get(s.name)
        if f is not None and f.aliases == s.aliases:
            assert s.rows.tolist() == f.rows.tolist(), s.name
            checked += 1
    assert checked >= 3
    new_rows = [r for r, p in enumerate(new.passages) if p.doc_id == "aftercare"]
    assert any(carried.body[r] for r in new_rows)  # the new passages name known subjects
    # past the share, a full discovery runs again
    monkeypatch.setattr(sj, "REDISCOVER_SHARE", 0.0)
    (corpus / "aftercare.txt").write_text("Aftercare Notes\nAfter microneedling, avoid the sun for two weeks.\n")
    a.reindex()
    assert calls == [1]
    assert "changed_since_discovery" not in json.loads((ix.current_generation(tmp_path / "index") / sj.SAVED_NAME).read_text())


def test_a_format_2_generation_is_still_read(built):
    """Before format 3, vectors lived in .npy files beside id-keyed FAISS indexes."""
    a, corpus, index = built
    want = answers(a.ask(QUESTION))
    gen = ix.current_generation(index)
    loaded = ix.load(index, mmap=False)
    np.save(gen / "passage_vectors.npy", np.asarray(loaded.passage_vectors, dtype=np.float32))
    np.save(gen / "sentence_vectors.npy", np.asarray(loaded.sent_vectors, dtype=np.float32))
    m = json.loads((gen / "manifest.json").read_text())
    m["format"] = 2
    (gen / "manifest.json").write_text(json.dumps(m))
    for name in ("passages.faiss", "sentences.faiss"):  # a new file: mappings of the old one stay valid
        (gen / name).unlink()
        (gen / name).write_bytes(b"an id-keyed index the reader no longer needs")
    old = ix.load(index)
    assert old.passage_store.kind == "flat" and len(old.sentence_store) == len(loaded.sent_passage)
    np.testing.assert_allclose(old.passage_vectors, loaded.passage_vectors)
    reopened = Assistant.open(settings=a.settings)
    assert answers(reopened.ask(QUESTION)) == want


def _clustered(n: int, dim: int = 48, centres: int = 40, seed: int = 7) -> np.ndarray:
    """Unit vectors in clusters of near-duplicates (as the bench library's stand-ins are)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    v = c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_an_int8_ivf_store_keeps_a_byte_a_dimension_and_ranks_as_float16(tmp_path, monkeypatch):
    """Sentences' default dtype: IVF lists hold 8-bit codes (a quarter of float32's bytes), rows
    read back within the codes' step, each row finds itself and the top 20 are float16's; the
    delta and a flat level hold float16 (their search is exact over few vectors)."""
    monkeypatch.setattr(ix, "IVF_NPROBE", 4)
    vecs = _clustered(4000)
    store = ix.FaissStore.build(vecs, "ivf", "int8")
    assert store.describe()["dtype"] == "int8" and store.index.code_size == vecs.shape[1]
    store.save(tmp_path / "v.faiss")
    loaded = ix.FaissStore.load(tmp_path / "v.faiss")
    assert loaded.kind == "ivf" and loaded.dtype == "int8"
    m = loaded.matrix()
    assert m.dtype == np.float16 and m.shape == vecs.shape
    assert np.abs(np.asarray(m[:], np.float32) - vecs).max() < 0.02
    half = ix.FaissStore.build(vecs, "ivf", "float16")
    same = []
    for row in range(0, 4000, 37):
        q = vecs[row]
        rows, _ = loaded.search(q, 20)
        assert rows[0] == row
        same.append(len(np.intersect1d(rows, half.search(q, 20)[0])) / 20)
    assert np.mean(same) > 0.95
    extra = _clustered(30, seed=9)
    loaded.add(extra)  # a delta beside the mapped file: float16, searched exactly
    assert loaded.delta.code_size == 2 * vecs.shape[1]
    np.testing.assert_array_equal(np.asarray(loaded.matrix()[4000:4030]), extra.astype(np.float16))
    assert loaded.search(extra[3], 1)[0][0] == 4003
    assert ix.FaissStore.create(vecs.shape[1], "flat", "int8").dtype == "float16"
    assert [ix.level_dtype(k, "int8") for k in ("flat", "pq", "hnsw", "ivf")] == ["float16"] * 3 + ["int8"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_an_ivf_store_finds_every_row_reads_rows_back_and_survives_save_and_load(tmp_path, monkeypatch, dtype):
    """IVF with fewer cells scanned than it has: each row is in the cell nearest to it, so it
    finds itself; rows read back through the direct map are the vectors a flat store holds
    (float16: the same codes); recall against exact search is high; tombstones and a delta work as for HNSW."""
    monkeypatch.setattr(ix, "IVF_NPROBE", 4)
    vecs = _clustered(4000)
    store = ix.FaissStore.build(vecs, "ivf", dtype)
    d = store.describe()
    assert d["kind"] == "ivf" and d["nlist"] == ix.ivf_nlist(4000) > ix.IVF_NPROBE and d["nprobe"] == 4
    store.save(tmp_path / "v.faiss")
    loaded = ix.FaissStore.load(tmp_path / "v.faiss")  # memory-mapped lists
    assert loaded.kind == "ivf" and loaded.dtype == dtype and len(loaded) == 4000
    m = loaded.matrix()
    assert m.shape == vecs.shape and m.dtype == ix.DTYPES[dtype]
    want = np.array(ix.FaissStore.build(vecs, "flat", dtype).matrix())  # the same codes as a flat store's
    np.testing.assert_array_equal(m[:], want)
    np.testing.assert_array_equal(m[[5, 3999, 5]], want[[5, 3999, 5]])
    np.testing.assert_array_equal(m[17], want[17])
    np.testing.assert_array_equal(m[10:20, :3], want[10:20, :3])
    with pytest.raises(IndexError):
        m[[4000]]
    recall = []
    for row in range(0, 4000, 37):
        q = np.asarray(m[row], dtype=np.float32)
        rows, scores = loaded.search(q, 20)
        assert rows[0] == row and abs(scores[0] - float(q @ q)) < 1e-4
        recall.append(len(np.intersect1d(rows, loaded.exact_search(q, 20)[0])) / 20)
    assert np.mean(recall) > 0.9
    # some cells are not scanned: with every cell scanned the results differ for some query
    monkeypatch.setattr(ix, "IVF_NPROBE", d["nlist"])
    full = [loaded.search(np.asarray(m[r], np.float32), 20)[0].tolist() for r in range(0, 4000, 37)]
    monkeypatch.setattr(ix, "IVF_NPROBE", 1)
    one = [loaded.search(np.asarray(m[r], np.float32), 20)[0].tolist() for r in range(0, 4000, 37)]
    assert one != full
    monkeypatch.setattr(ix, "IVF_NPROBE", 4)
    # tombstones and a delta: rows renumbered, the file untouched
    extra = _clustered(30, seed=9)
    loaded.keep_rows(np.arange(100, 4000))
    loaded.add(extra)
    assert len(loaded) == 3930 and loaded.dead == 100 and loaded.pending == 30
    m2 = loaded.matrix()
    np.testing.assert_array_equal(np.asarray(m2[[0, 3899, 3900, 3929]], np.float32),
                                  np.concatenate([want[[100, 3999]], ix.FaissStore.build(extra, "flat", dtype).matrix()[[0, 29]]]).astype(np.float32))
    for row in (0, 1234, 3899, 3900, 3929):
        rows, _ = loaded.search(np.asarray(m2[row], dtype=np.float32), 5)
        assert rows[0] == row and rows.max() < 3930
    loaded.save(tmp_path / "w.faiss")
    assert (tmp_path / "w.faiss").stat().st_ino == (tmp_path / "v.faiss").stat().st_ino  # linked, not rewritten
    again = ix.FaissStore.load(tmp_path / "w.faiss")
    assert again.search(np.asarray(m2[3929], np.float32), 1)[0][0] == 3929


def test_ivf_cells_grow_with_the_level_and_train_on_a_sample():
    assert ix.ivf_nlist(100) == 2  # never fewer than IVF_TRAIN_PER_CELL samples per cell
    assert ix.ivf_nlist(40_000) == 512 and ix.ivf_nlist(400_000) == 1024 and ix.ivf_nlist(4_400_000) == 4096
    a, b = np.arange(10, dtype=np.float32)[:, None], np.arange(100, 105, dtype=np.float32)[:, None]
    s = ix.training_sample([(a, np.array([1, 3, 5])), b], 8)
    assert sorted(s[:, 0].tolist()) == [1, 3, 5, 100, 101, 102, 103, 104]
    assert len(ix.training_sample([a, b], 4)) == 4


def test_bad_vector_settings_are_said_clearly(monkeypatch):
    from assistant.errors import AssistantError

    monkeypatch.setenv("ASSISTANT_HNSW_M", "sixteen")
    monkeypatch.setattr(ix, "ENV_ERRORS", [])
    assert ix._env_int("ASSISTANT_HNSW_M", 16, minimum=2) == 16
    monkeypatch.setenv("ASSISTANT_ANN_KIND", "annoy")
    ix._env_choice("ASSISTANT_ANN_KIND", ix.ANN_KINDS, "ivf")
    with pytest.raises(AssistantError, match="ASSISTANT_HNSW_M='sixteen'.*ASSISTANT_ANN_KIND='annoy'"):
        ix.check_env()
    with pytest.raises(AssistantError):
        ix.FaissStore.create(8, "flat")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_pq_store_scans_codes_rescores_exactly_and_survives_save_and_load(tmp_path, monkeypatch, dtype):
    """PQ: the vectors are a flat file (rows read back as a flat store's), the codes beside it;
    a search rescores its candidates exactly, so scores are exact and every row finds itself;
    with fewer candidates rescored than rows, results can differ from exact search, and with
    enough they do not; tombstones and a delta work as for the other kinds."""
    monkeypatch.setattr(ix, "PQ_RESCORE", 60)
    vecs = _clustered(3000, dim=64, centres=300)
    store = ix.FaissStore.build(vecs, "pq", dtype)
    assert store.describe() == {"kind": "pq", "dtype": dtype, "vectors": 3000, "code_bytes": 8, "rescored": 60}
    store.save(tmp_path / "p.faiss")
    assert (tmp_path / ("p.faiss" + ix.SCAN_SUFFIX)).exists()
    loaded = ix.FaissStore.load(tmp_path / "p.faiss")
    assert loaded.kind == "pq" and loaded.dtype == dtype and len(loaded) == 3000
    flat = ix.FaissStore.build(vecs, "flat", dtype)
    m = loaded.matrix()
    np.testing.assert_array_equal(np.asarray(m), np.asarray(flat.matrix()))
    recall = []
    for row in range(0, 3000, 29):
        q = np.asarray(m[row], dtype=np.float32)
        rows, scores = loaded.search(q, 20)
        want_rows, want_scores = flat.search(q, 20)
        assert rows[0] == row
        np.testing.assert_allclose(scores, np.asarray(m[rows], np.float32) @ q, rtol=1e-5, atol=1e-5)  # exact scores
        recall.append(len(np.intersect1d(rows, want_rows)) / 20)
    assert 0.8 < np.mean(recall) < 1.0  # approximate: 60 of 3,000 rescored
    monkeypatch.setattr(ix, "PQ_RESCORE", 3000)
    for row in range(0, 3000, 97):
        q = np.asarray(m[row], dtype=np.float32)
        assert loaded.search(q, 20)[0].tolist() == flat.search(q, 20)[0].tolist()
    monkeypatch.setattr(ix, "PQ_RESCORE", 60)
    extra = _clustered(30, dim=64, centres=300, seed=9)
    loaded.keep_rows(np.arange(100, 3000))
    loaded.add(extra)
    assert len(loaded) == 2930 and loaded.dead == 100 and loaded.pending == 30
    m2 = loaded.matrix()
    for row in (0, 1234, 2899, 2900, 2929):
        rows, _ = loaded.search(np.asarray(m2[row], dtype=np.float32), 5)
        assert rows[0] == row and rows.max() < 2930
    loaded.save(tmp_path / "q.faiss")
    for suffix in ("", ix.SCAN_SUFFIX):  # both files linked, not rewritten
        assert (tmp_path / ("q.faiss" + suffix)).stat().st_ino == (tmp_path / ("p.faiss" + suffix)).stat().st_ino
    again = ix.FaissStore.load(tmp_path / "q.faiss")
    assert again.kind == "pq" and again.search(np.asarray(m2[2929], np.float32), 1)[0][0] == 2929


# --- the passage dtype (issue 11: memory at a million passages) --------------------------------

def test_the_passage_dtype_is_a_setting_read_at_import_and_checked(monkeypatch):
    """ASSISTANT_PASSAGE_DTYPE picks the dtype of new passage levels; a bad value is said, not used."""
    import subprocess
    import sys

    from assistant.errors import AssistantError

    code = "import assistant.index as ix; print(ix.PASSAGE_DTYPE, ix.ENV_ERRORS)"
    repo = str(Path(__file__).resolve().parent.parent)
    for value, want in (("float16", "float16 []"), ("FLOAT32", "float32 []"), ("", ix.PASSAGE_DTYPE + " []")):
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("ASSISTANT_")}
        env.update(PYTHONPATH=repo, ASSISTANT_PASSAGE_DTYPE=value)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.stdout.strip() == want, (value, out.stderr[-500:])
    monkeypatch.setenv("ASSISTANT_PASSAGE_DTYPE", "bfloat16")
    monkeypatch.setattr(ix, "ENV_ERRORS", [])
    assert ix._env_choice("ASSISTANT_PASSAGE_DTYPE", tuple(ix.DTYPES), "float16") == "float16"
    with pytest.raises(AssistantError, match="ASSISTANT_PASSAGE_DTYPE='bfloat16' is not one of float32, float16"):
        ix.check_env()


def _file_bytes(index: Path, name: str) -> int:
    return (ix.current_generation(index) / name).stat().st_size


@pytest.mark.parametrize("kind", ["flat", "pq", "ivf", "hnsw"])
def test_float16_passages_round_trip_search_and_answer_as_float32(tmp_path, embedder, monkeypatch, kind):
    """A library built with float16 passage vectors: the manifest and the loaded store say
    float16, the rows are the float32 build's rounded to float16, each row finds itself, the
    vector file is about half the size, and the answers are the float32 library's."""
    monkeypatch.setattr(ix, "PASSAGE_DTYPE", "float32")
    ref = open_assistant(write_corpus(tmp_path / "c32", SMALL_CORPUS), tmp_path / "i32")
    if kind != "flat":
        monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 1)
        monkeypatch.setattr(ix, "ANN_KIND", kind)
    monkeypatch.setattr(ix, "PASSAGE_DTYPE", "float16")
    half = open_assistant(write_corpus(tmp_path / "c16", SMALL_CORPUS), tmp_path / "i16")
    m = json.loads((ix.current_generation(tmp_path / "i16") / "manifest.json").read_text())["vector_search"]
    assert m["passages"]["kind"] == kind and m["passages"]["dtype"] == "float16"
    loaded, want = ix.load(tmp_path / "i16"), ix.load(tmp_path / "i32")
    assert loaded.passage_store.dtype == "float16" and loaded.passage_store.kind == kind
    assert want.passage_store.dtype == "float32"
    pv = np.asarray(loaded.passage_vectors)
    assert pv.dtype == np.float16
    assert [p.id for p in loaded.passages] == [p.id for p in want.passages]
    np.testing.assert_array_equal(pv, np.asarray(want.passage_vectors, dtype=np.float32).astype(np.float16))
    for row in range(len(loaded.passages)):
        rows, scores = loaded.passage_store.search(pv[row].astype(np.float32), 3)
        assert rows[0] == row and abs(scores[0] - 1.0) < 2e-3
    if kind in ("flat", "pq"):  # the vectors are the file (PQ's codes are beside it; HNSW adds a graph)
        p16, p32 = _file_bytes(tmp_path / "i16", ix.PASSAGE_STORE), _file_bytes(tmp_path / "i32", ix.PASSAGE_STORE)
        assert 2 * len(pv) * embedder.dim <= p16 <= p32 / 2 + 512, (p16, p32)
    for q in (QUESTION, "How long should the frostleaf mask stay on the skin?", "What is the frostleaf mask made from?",
              "How often is a glowberry peel session repeated?"):
        assert answers(half.ask(q)) == answers(ref.ask(q)), q


@pytest.mark.parametrize("kind", ["flat", "pq"])
def test_a_float32_passage_index_is_served_as_it_is_and_converted_once_by_a_changing_reindex(tmp_path, embedder,
                                                                                           monkeypatch, kind):
    """An index written before float16 passages (or with ASSISTANT_PASSAGE_DTYPE=float32): its
    store's dtype is read from the file, so it is served as float32 whatever the setting; a
    no-op reindex leaves it alone; the first reindex that changes the library rebuilds the
    passage level in the setting's dtype from its stored vectors (nothing re-embedded), never
    a float32 file with a float16 delta."""
    from assistant.reindex import reindex

    if kind != "flat":
        monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 1)
        monkeypatch.setattr(ix, "ANN_KIND", kind)
    monkeypatch.setattr(ix, "PASSAGE_DTYPE", "float32")
    corpus, index = write_corpus(tmp_path / "c", SMALL_CORPUS), tmp_path / "i"
    old = open_assistant(corpus, index)
    before = {q: answers(old.ask(q)) for q in (QUESTION, "What is the frostleaf mask made from?")}
    old_vecs = np.asarray(ix.load(index).passage_vectors, dtype=np.float32).copy()
    old_gen = ix.current_generation(index)

    monkeypatch.setattr(ix, "PASSAGE_DTYPE", "float16")  # the new default
    served = Assistant.open(settings=Settings(corpus_dir=corpus, index_dir=index))
    idx = served._current().index
    assert idx.passage_store.dtype == "float32" and idx.manifest["vector_search"]["passages"]["dtype"] == "float32"
    assert {q: answers(served.ask(q)) for q in before} == before
    report = reindex(served.settings, embedder)
    assert not report.touched and ix.current_generation(index) == old_gen  # nothing changed: nothing converted

    embedded = []
    real_embed = embedder.encode_passages
    monkeypatch.setattr(embedder, "encode_passages", lambda texts, *a, **k: embedded.extend(texts) or real_embed(texts, *a, **k))
    (corpus / "sunmoss.txt").write_text("Sunmoss Oil\nSunmoss oil is pressed from the seeds of the sunmoss fern.\n"
                                        "A sunmoss massage lasts forty-five minutes.\n")
    report = reindex(served.settings, embedder)
    assert report.added == ["sunmoss"] and embedded and all("unmoss" in t for t in embedded)  # the old rows are not re-embedded
    new = ix.load(index)
    assert new.passage_store.dtype == "float16" and new.passage_store.kind == kind
    assert new.manifest["vector_search"]["passages"]["dtype"] == "float16"
    assert new.passage_store.delta is None and new.passage_store.live is None  # one rebuilt file, no mix
    n_old = len(old_vecs)
    np.testing.assert_array_equal(np.asarray(new.passage_vectors[:n_old]), old_vecs.astype(np.float16))
    # the article centroids are those of a fresh float16 build (recomputed, not carried from float32)
    fresh = tmp_path / "fresh"
    reindex(Settings(corpus_dir=corpus, index_dir=fresh), embedder)
    fresh = ix.load(fresh)
    assert fresh.passage_store.dtype == "float16"
    row_of = {p.id: r for r, p in enumerate(fresh.passages)}
    rows = np.array([row_of[p.id] for p in new.passages])
    np.testing.assert_allclose(new.centroids.vectors(new.centroids.of_row),  # carried float32 ones differ by ~1e-4
                               fresh.centroids.vectors(fresh.centroids.of_row[rows]), rtol=0, atol=1e-6)
    reopened = Assistant.open(settings=served.settings)
    assert {q: answers(reopened.ask(q))[:1] for q in before} == {q: a[:1] for q, a in before.items()}
    assert "forty-five minutes" in reopened.ask("How long does a sunmoss massage last?").answers[0].text

    # ASSISTANT_PASSAGE_DTYPE=float32 brings float32 back the same way (the rows keep float16's rounding)
    monkeypatch.setattr(ix, "PASSAGE_DTYPE", "float32")
    (corpus / "sunmoss.txt").unlink()
    reindex(served.settings, embedder)
    back = ix.load(index)
    assert back.passage_store.dtype == "float32" and back.manifest["vector_search"]["passages"]["dtype"] == "float32"

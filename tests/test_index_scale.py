"""A large library's index under change: HNSW levels keep removed rows as tombstones (no graph
rebuild), BM25 and subjects are updated, not recomputed over the library, and the answers after
any such reindex equal those of a build from nothing. Real model; small corpora written here,
with the size thresholds lowered so that they take the large-library paths."""
from __future__ import annotations

import json

import numpy as np
import pytest

from assistant import index as ix
from assistant.retrieval import _doc_centroids as _DOC_CENTROIDS
from tests.fixtures_core import SMALL_CORPUS, open_assistant, write_corpus

SUNMOSS = "Sunmoss Oil\nSunmoss oil is pressed from the seeds of the sunmoss fern.\nA sunmoss massage lasts forty-five minutes.\n"
GLOWBERRY_V2 = """Glowberry Peel Guide
The glowberry peel is a gentle fruit-acid peel used to brighten dull skin. It is made from fermented glowberry juice.
A glowberry peel session takes about thirty-five minutes and is repeated every six weeks.
"""
QUESTIONS = ("How long does a glowberry peel session take?", "How long does a sunmoss massage last?",
             "What is the frostleaf mask made from?", "How long should the frostleaf mask stay on the skin?",
             "How often is the glowberry peel repeated?")


def answers(res) -> list[tuple]:
    return [(a.source.doc_id, a.source.start, a.source.end, a.text) for a in res.answers]


def _rows_find_themselves(index) -> None:
    for store, n in ((index.passage_store, len(index.passages)), (index.sentence_store, len(index.sent_passage))):
        assert len(store) == n
        m = store.matrix()
        assert m.shape == (n, store.dim)
        for row in range(0, n, max(1, n // 15)):
            rows, scores = store.search(np.asarray(m[row], dtype=np.float32), 3)
            assert int(rows[0]) == row and scores[0] > 0.99, (row, rows)
            assert rows.max() < n
        # exact search over the same rows agrees
        assert store.exact_search(np.asarray(m[0], dtype=np.float32), 1)[0][0] == 0


@pytest.fixture(params=["pq", "ivf", "hnsw"])
def hnsw(monkeypatch, request):
    """Every level approximate (of the kind given: PQ and IVF, the defaults of passages and
    sentences, and HNSW, still served and buildable); records the stores created (a rebuild creates one)."""
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 1)
    monkeypatch.setattr(ix, "ANN_KIND", request.param)
    created = []
    real_create = ix.FaissStore.create.__func__
    monkeypatch.setattr(ix.FaissStore, "create",
                        classmethod(lambda cls, *a, **k: created.append(a) or real_create(cls, *a, **k)))
    return created


def test_removed_and_changed_articles_leave_hnsw_as_tombstones(tmp_path, embedder, hnsw, monkeypatch):
    monkeypatch.setattr(ix, "MAX_TOMBSTONE_SHARE", 0.9)
    corpus = write_corpus(tmp_path / "c", {**SMALL_CORPUS, "sunmoss.txt": SUNMOSS})
    a = open_assistant(corpus, tmp_path / "i")
    hnsw.clear()
    (corpus / "sunmoss.txt").unlink()
    (corpus / "glowberry-peel.txt").write_text(GLOWBERRY_V2)
    r = a.reindex()
    assert r.removed == ["sunmoss"] and r.changed == ["glowberry-peel"]
    assert hnsw == []  # neither graph was rebuilt
    index = ix.load(tmp_path / "i")
    assert index.passage_store.dead > 0 and index.sentence_store.dead > 0
    assert index.manifest["vector_search"]["sentences"]["tombstones"] == index.sentence_store.dead
    _rows_find_themselves(index)
    assert not any("sunmoss" in p.text.lower() for p in index.passages)
    # the same answers as a build from nothing (exact search)
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 10**9)
    fresh_corpus = write_corpus(tmp_path / "c2", {**SMALL_CORPUS, "glowberry-peel.txt": GLOWBERRY_V2})
    fresh = open_assistant(fresh_corpus, tmp_path / "i2")
    assert fresh._current().index.passage_store.kind == "flat"
    a2 = open_assistant(corpus, tmp_path / "i", build=False)  # a server starting on the tombstoned index
    for q in QUESTIONS:
        assert answers(a.ask(q)) == answers(fresh.ask(q)), q
        assert answers(a2.ask(q)) == answers(fresh.ask(q)), q
    assert "thirty-five minutes" in a.ask(QUESTIONS[0]).answers[0].text
    # adding after removing: new rows appended to the graph, tombstones kept
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 1)
    hnsw.clear()
    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    before = ix.current_generation(tmp_path / "i")
    a.reindex()
    assert hnsw == []
    index = ix.load(tmp_path / "i")
    assert index.sentence_store.dead > 0 and index.sentence_store.pending > 0  # new rows in the delta
    # the graph's file was not rewritten: the new generation links to it
    assert (index.path / ix.SENTENCE_STORE).stat().st_ino == (before / ix.SENTENCE_STORE).stat().st_ino
    _rows_find_themselves(index)
    assert "forty-five minutes" in a.ask(QUESTIONS[1]).answers[0].text


def test_too_many_tombstones_rebuild_the_graph(tmp_path, embedder, hnsw, monkeypatch):
    monkeypatch.setattr(ix, "MAX_TOMBSTONE_SHARE", 0.05)
    corpus = write_corpus(tmp_path / "c", {**SMALL_CORPUS, "sunmoss.txt": SUNMOSS})
    a = open_assistant(corpus, tmp_path / "i")
    hnsw.clear()
    (corpus / "glowberry-peel.txt").unlink()
    a.reindex()
    assert len(hnsw) == 2  # both levels rebuilt from their rows
    index = ix.load(tmp_path / "i")
    assert index.passage_store.dead == index.sentence_store.dead == 0 and index.passage_store.live is None
    assert not (index.path / (ix.SENTENCE_STORE + ix.LIVE_SUFFIX)).exists()
    _rows_find_themselves(index)


# --- subjects: carried over, extended by what the new articles introduce ----------------------

CRYO = """Cryo Facial vs. Oxygen Facial
A cryo facial blows very cold air over the face for about ten minutes. An oxygen facial sprays
pressurised oxygen mixed with serums onto the skin and takes about forty minutes.
Cryo Facial
The cryo facial tightens pores for a day or two. A cryo facial costs about sixty euros.
Oxygen Facial
The oxygen facial leaves the skin plumper for a few days. An oxygen facial costs about ninety euros.
Which one to choose
The choice between a cryo facial and an oxygen facial depends on budget and time.
"""
SUBJECT_QUESTIONS = ("Compare cryo facial and oxygen facial", "How much does an oxygen facial cost?",
                     "How long does a cryo facial take?", "Compare PRP and microneedling downtime",
                     "What is exosome therapy?", "Mesotherapy vs microneedling: which hurts more?")


def _subject_table(subjects) -> dict:
    return {s.name: (sorted(s.aliases), s.rows.tolist()) for s in subjects.subjects}


def test_a_small_change_updates_the_subjects_and_answers_as_a_full_build(tmp_path, embedder, monkeypatch):
    from assistant import subjects as sj
    from tests.fixtures_core import copy_seed_corpus

    monkeypatch.setattr(sj, "INCREMENTAL_MIN_PASSAGES", 1)  # the seed corpus plays a large library
    monkeypatch.setattr(sj, "REDISCOVER_SHARE", 1.0)
    corpus = copy_seed_corpus(tmp_path / "corpus")
    a = open_assistant(corpus, tmp_path / "index")
    calls = []
    real_build = sj.build
    monkeypatch.setattr(sj, "build", lambda *x, **k: calls.append(1) or real_build(*x, **k))
    (corpus / "cryo-vs-oxygen-facial.txt").write_text(CRYO)
    assert a.reindex().added == ["cryo-vs-oxygen-facial"]
    assert calls == []  # no full discovery
    inc = ix.load(tmp_path / "index")
    carried = sj.for_index(inc, corpus)
    names = {s.name.lower() for s in carried.subjects}
    assert {"cryo facial", "oxygen facial"} <= names, names  # introduced by the new article

    fresh = open_assistant(corpus, tmp_path / "fresh")  # a build from nothing: a full discovery
    assert calls == [1]
    calls.clear()
    full = sj.for_index(fresh._current().index, corpus)
    # the subjects the new article introduced are those a full discovery finds, on the same passages
    # (row numbers differ: an incremental build appends; compare by passage id)
    def by_pid(index, subjects):
        return {s.name: sorted(index.passages[r].id for r in s.rows) for s in subjects.subjects}

    inc_rows, full_rows = by_pid(inc, carried), by_pid(fresh._current().index, full)
    for name in ("cryo facial", "oxygen facial"):
        got = next(v for k, v in inc_rows.items() if k.lower() == name)
        want = next(v for k, v in full_rows.items() if k.lower() == name)
        assert got == want, name
    for q in SUBJECT_QUESTIONS:
        assert answers(a.ask(q)) == answers(fresh.ask(q)), q

    # removing it: its subjects leave with it, the rest is as a full build has it
    (corpus / "cryo-vs-oxygen-facial.txt").unlink()
    a.reindex()
    fresh.reindex()
    assert calls == []  # both carried their discovery over
    carried = sj.for_index(ix.load(tmp_path / "index"), corpus)
    assert not {"cryo facial", "oxygen facial"} & {s.name.lower() for s in carried.subjects}
    for q in SUBJECT_QUESTIONS:
        assert answers(a.ask(q)) == answers(fresh.ask(q)), q


def test_a_full_delta_rebuilds_the_graph_with_every_row(tmp_path, embedder, hnsw, monkeypatch):
    monkeypatch.setattr(ix, "DELTA_MAX_VECTORS", 2)
    corpus = write_corpus(tmp_path / "c", SMALL_CORPUS)
    a = open_assistant(corpus, tmp_path / "i")
    hnsw.clear()
    (corpus / "sunmoss.txt").write_text(SUNMOSS)  # one passage, three sentences
    a.reindex()
    index = ix.load(tmp_path / "i")
    assert index.passage_store.pending == 1 and index.sentence_store.pending == 0  # 3 > 2: rebuilt
    assert [x[1] for x in hnsw] == [ix.ANN_KIND]
    _rows_find_themselves(index)
    assert "forty-five minutes" in a.ask(QUESTIONS[1]).answers[0].text


def _as_format_5_bm25(gen, token_lists: bool = False) -> None:
    """A generation's BM25 levels as format 5 wrote them: bm25s's arrays with tf.npy and
    doclen.npy beside them, or (`token_lists`, older still) without them, the tokens kept as
    lists in bm25-tokens.npz."""
    import shutil

    from tests.test_bm25_postings import write_format_5

    tokens = ix.load_tokens(gen)
    for level, rows in (("bm25-passages", tokens.passages), ("bm25-sentences", tokens.sentences)):
        shutil.rmtree(gen / level)
        write_format_5(rows, gen / level)
        if token_lists:
            (gen / level / ix.BM25_TF).unlink()
            (gen / level / ix.BM25_DOCLEN).unlink()
    if token_lists:
        ix.save_tokens(gen / ix.TOKENS_FILE, tokens)
    m = json.loads((gen / "manifest.json").read_text())
    m["format"] = 5
    (gen / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("token_lists", [False, True])
def test_an_older_bm25_generation_is_served_and_converted_to_segments(tmp_path, embedder, token_lists):
    """Format 5 kept bm25s's arrays (a score per entry) with the term frequencies beside them;
    earlier generations kept BM25 tokens as lists. Both are served as they are; the next
    reindex converts them to segments once, without re-embedding or re-tokenising kept articles,
    and its scores are those of a build from nothing, bit for bit."""
    corpus = write_corpus(tmp_path / "c", SMALL_CORPUS)
    a = open_assistant(corpus, tmp_path / "i")
    want = [answers(a.ask(q)) for q in QUESTIONS]
    gen = ix.current_generation(tmp_path / "i")
    _as_format_5_bm25(gen, token_lists)
    old = ix.load(tmp_path / "i")
    assert isinstance(old.bm25_passages, ix.ScoredLevel) and isinstance(old.bm25_sentences, ix.ScoredLevel)
    served = open_assistant(corpus, tmp_path / "i")
    assert [answers(served.ask(q)) for q in QUESTIONS] == want
    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    r = served.reindex()
    assert r.added == ["sunmoss"] and r.embedded_passages == 1
    inc = ix.load(tmp_path / "i")
    assert isinstance(inc.bm25_passages, ix.BM25Level) and isinstance(inc.bm25_sentences, ix.BM25Level)
    assert (inc.path / "bm25-sentences" / ix.LEVEL_META).exists() and not (inc.path / ix.TOKENS_FILE).exists()
    assert ix.load_level_postings(inc.path) is not None
    fresh_a = open_assistant(corpus, tmp_path / "i2")
    fresh = ix.load(fresh_a.settings.index_dir)
    assert inc.vocab == fresh.vocab and inc.idf == fresh.idf
    perm = np.array([{p.id: i for i, p in enumerate(inc.passages)}[p.id] for p in fresh.passages])
    s_perm = np.concatenate([np.arange(*inc.sent_rows[r]) for r in perm])
    for q in (["sunmoss", "massag"], ["frostleaf", "mask"], ["glowberri"]):
        np.testing.assert_array_equal(ix.bm25_scores(inc.bm25_passages, q, len(inc.passages))[perm],
                                      ix.bm25_scores(fresh.bm25_passages, q, len(fresh.passages)))
        np.testing.assert_array_equal(ix.bm25_scores(inc.bm25_sentences, q, len(inc.sent_passage))[s_perm],
                                      ix.bm25_scores(fresh.bm25_sentences, q, len(fresh.sent_passage)))
    assert [answers(served.ask(q)) for q in QUESTIONS] == [answers(fresh_a.ask(q)) for q in QUESTIONS]


def test_bm25_segments_are_linked_tombstoned_and_merged(tmp_path, embedder, monkeypatch):
    """An added article goes to the BM25 delta and a removed one becomes tombstones: the main
    segment's files are hard-linked from the previous generation, not rewritten. Past the
    delta's share the segments are merged into a new main. Scores equal a build from nothing's
    throughout, and a generation whose write was cut off leaves the served one intact."""
    import os

    monkeypatch.setattr(ix, "MAX_TOMBSTONE_SHARE", 0.5)  # one article of four: tombstones, not merged
    corpus = write_corpus(tmp_path / "c", SMALL_CORPUS)
    a = open_assistant(corpus, tmp_path / "i")
    first = ix.current_generation(tmp_path / "i")
    n_first = len(ix.load(tmp_path / "i").passages)

    def same_as_fresh(tag: str) -> ix.Index:
        inc = ix.load(tmp_path / "i")
        fresh = ix.load(open_assistant(corpus, tmp_path / f"fresh-{tag}").settings.index_dir)
        perm = np.array([{p.id: i for i, p in enumerate(inc.passages)}[p.id] for p in fresh.passages])
        s_perm = np.concatenate([np.arange(*inc.sent_rows[r]) for r in perm]) if len(perm) else np.zeros(0, np.int64)
        assert inc.vocab == fresh.vocab
        for t in sorted(fresh.vocab):
            np.testing.assert_array_equal(ix.bm25_scores(inc.bm25_passages, [t], len(inc.passages))[perm],
                                          ix.bm25_scores(fresh.bm25_passages, [t], len(fresh.passages)), err_msg=t)
            np.testing.assert_array_equal(ix.bm25_scores(inc.bm25_sentences, [t], len(inc.sent_passage))[s_perm],
                                          ix.bm25_scores(fresh.bm25_sentences, [t], len(fresh.sent_passage)), err_msg=t)
        return inc

    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    a.reindex()
    inc = same_as_fresh("add")
    for level in ("bm25-passages", "bm25-sentences"):
        for f in ix.MAIN_FILES:
            assert os.path.samefile(first / level / f, inc.path / level / f), (level, f)
    assert len(inc.bm25_passages.delta_doclen) == 1 and inc.bm25_passages.rowmap is None
    added = inc.path
    removed = sorted(corpus.glob("*.txt"))[0]
    removed.unlink()
    a.reindex()
    inc = same_as_fresh("remove")
    assert inc.bm25_passages.rowmap is not None and inc.bm25_passages.n_main == n_first
    assert len(inc.bm25_passages.delta_doclen) == 1
    for f in ix.MAIN_FILES:
        assert os.path.samefile(added / "bm25-sentences" / f, inc.path / "bm25-sentences" / f), f

    # a write cut off after the BM25 levels: the served generation is untouched and still answers
    served = ix.current_generation(tmp_path / "i")
    real_save = ix.ArticleCentroids.save
    monkeypatch.setattr(ix.ArticleCentroids, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    (corpus / "late.txt").write_text("Late Balm\nThe late balm is rubbed in at night.\n")
    with pytest.raises(KeyboardInterrupt):
        a.reindex()
    monkeypatch.setattr(ix.ArticleCentroids, "save", real_save)
    assert ix.current_generation(tmp_path / "i") == served
    assert ix.load(tmp_path / "i").bm25_passages.n_rows == inc.bm25_passages.n_rows
    (corpus / "late.txt").unlink()

    monkeypatch.setattr(ix, "BM25_DELTA_MIN", 0)  # the next change passes the delta's share: merged
    monkeypatch.setattr(ix, "BM25_DELTA_SHARE", 0.0)
    (corpus / "sunmoss.txt").write_text(SUNMOSS + "Sunmoss oil is also sold as sunmoss butter.\n")
    a.reindex()
    inc = same_as_fresh("merge")
    for level in (inc.bm25_passages, inc.bm25_sentences):
        assert level.rowmap is None and not len(level.delta_doclen) and level.n_main == level.n_rows
    assert [answers(a.ask(q)) for q in QUESTIONS] == \
        [answers(open_assistant(corpus, tmp_path / "fresh-merge").ask(q)) for q in QUESTIONS]


def test_flat_levels_also_link_their_file_and_keep_changes_beside_it(tmp_path, embedder, monkeypatch):
    monkeypatch.setattr(ix, "MAX_TOMBSTONE_SHARE", 0.9)  # a small library: most of it changes
    created = []
    real_create = ix.FaissStore.create.__func__
    monkeypatch.setattr(ix.FaissStore, "create",
                        classmethod(lambda cls, *a, **k: created.append(a) or real_create(cls, *a, **k)))
    corpus = write_corpus(tmp_path / "c", {**SMALL_CORPUS, "sunmoss.txt": SUNMOSS})
    a = open_assistant(corpus, tmp_path / "i")
    before = ix.current_generation(tmp_path / "i")
    created.clear()
    (corpus / "sunmoss.txt").unlink()
    (corpus / "glowberry-peel.txt").write_text(GLOWBERRY_V2)
    a.reindex()
    assert created == []  # no level copied
    index = ix.load(tmp_path / "i")
    assert index.passage_store.kind == index.sentence_store.kind == "flat"
    assert index.passage_store.dead > 0 and index.passage_store.pending > 0
    for name in (ix.PASSAGE_STORE, ix.SENTENCE_STORE):
        assert (index.path / name).stat().st_ino == (before / name).stat().st_ino
    _rows_find_themselves(index)
    fresh = open_assistant(write_corpus(tmp_path / "c2", {**SMALL_CORPUS, "glowberry-peel.txt": GLOWBERRY_V2}),
                           tmp_path / "i2")
    for q in QUESTIONS:
        assert answers(a.ask(q)) == answers(fresh.ask(q)), q


def _stored_centroids_are_the_vectors_mean(index) -> np.ndarray:
    """The stored centroid of each passage row's article, checked bit for bit against the mean
    retrieval computes from the index's own passage vectors (what it did before they were stored)."""
    c = index.centroids
    assert c is not None and len(c.of_row) == len(index.passages)
    of_row = np.asarray(c.of_row)
    for r in range(len(index.passages)):  # one id per article, one article per id
        same = of_row == of_row[r]
        assert {index.passages[i].doc_id for i in np.flatnonzero(same)} == {index.passages[r].doc_id}
    doc_of, cent = _DOC_CENTROIDS(index)
    got = c.vectors(of_row)
    np.testing.assert_array_equal(got, cent[doc_of])
    return got


def test_article_centroids_are_stored_and_carried_over(tmp_path, embedder, monkeypatch):
    """Per-article centroids are made when a generation is built; a reindex computes only the new
    articles' (the base file is linked, the kept articles' ids carried over), and the numbers are
    those a question would have computed from every passage vector, so the answers are the same."""
    monkeypatch.setattr(ix, "MAX_TOMBSTONE_SHARE", 0.9)  # a small library: most of it changes
    corpus = write_corpus(tmp_path / "c", {**SMALL_CORPUS, "sunmoss.txt": SUNMOSS})
    a = open_assistant(corpus, tmp_path / "i")
    before = ix.current_generation(tmp_path / "i")
    _stored_centroids_are_the_vectors_mean(ix.load(tmp_path / "i"))
    (corpus / "sunmoss.txt").unlink()
    (corpus / "glowberry-peel.txt").write_text(GLOWBERRY_V2)
    a.reindex()
    index = ix.load(tmp_path / "i")
    base = ix.ArticleCentroids.BASE
    assert (index.path / base).stat().st_ino == (before / base).stat().st_ino  # linked, not rewritten
    assert len(index.centroids.delta) == 1 and index.centroids.n_ids > len(set(index.centroids.of_row.tolist()))
    inc = _stored_centroids_are_the_vectors_mean(index)
    # a build from nothing: the same centroid for every passage (up to re-embedding noise)
    fresh_a = open_assistant(write_corpus(tmp_path / "c2", {**SMALL_CORPUS, "glowberry-peel.txt": GLOWBERRY_V2}),
                             tmp_path / "i2")
    fresh = ix.load(tmp_path / "i2")
    perm = np.array([{p.id: i for i, p in enumerate(index.passages)}[p.id] for p in fresh.passages])
    np.testing.assert_allclose(inc[perm], _stored_centroids_are_the_vectors_mean(fresh), atol=1e-4)
    # no question reads every passage vector: the article prior reads the stored centroids
    from assistant import retrieval

    monkeypatch.setattr(retrieval, "_doc_centroids", lambda *_: pytest.fail("centroids computed on a question"))
    a2 = open_assistant(corpus, tmp_path / "i", build=False)
    for q in QUESTIONS:
        assert answers(a2.ask(q)) == answers(fresh_a.ask(q)), q
    # past the tombstone share, the centroids are rewritten with only the live articles
    monkeypatch.setattr(ix, "MAX_TOMBSTONE_SHARE", 0.0)
    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    a.reindex()
    index = ix.load(tmp_path / "i")
    assert len(index.centroids.delta) == 0 and index.centroids.n_ids == len(index.docs)
    _stored_centroids_are_the_vectors_mean(index)


def test_one_article_change_links_the_records_and_writes_only_its_own(tmp_path, embedder, monkeypatch):
    """Format 4: a reindex that adds or changes one article links the record segments of the
    others and writes one short segment; it parses no other article's record beyond the few
    passages the subjects re-examine; the answers equal a build from nothing."""
    from assistant import records
    from assistant import subjects as sj

    monkeypatch.setattr(sj, "INCREMENTAL_MIN_PASSAGES", 1)  # subjects carried over, as in a large library
    monkeypatch.setattr(sj, "REDISCOVER_SHARE", 1.0)
    corpus = write_corpus(tmp_path / "c", SMALL_CORPUS)
    a = open_assistant(corpus, tmp_path / "i")
    before = ix.current_generation(tmp_path / "i")
    (seg,) = before.glob("articles-*.rec")
    parsed = []
    real = records.DocTable._parsed
    monkeypatch.setattr(records.DocTable, "_parsed", lambda self, i: parsed.append(self.ids[i]) or real(self, i))
    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    r = a.reindex()
    assert r.added == ["sunmoss"]
    gen = ix.current_generation(tmp_path / "i")
    segs = sorted(gen.glob("articles-*.rec"))
    assert len(segs) == 2 and (gen / seg.name).stat().st_ino == seg.stat().st_ino  # linked, not rewritten
    (new_seg,) = [s for s in segs if s.name != seg.name]
    assert [d.doc_id for d, _ in records.iter_segment(new_seg)] == ["sunmoss"]
    assert set(parsed) <= {"sunmoss"}, parsed  # the kept articles' records were not read
    monkeypatch.setattr(records.DocTable, "_parsed", real)
    index = ix.load(tmp_path / "i")
    assert isinstance(index.passages, records.PassageTable) and isinstance(index.docs, records.DocTable)
    fresh_a = open_assistant(write_corpus(tmp_path / "c2", {**SMALL_CORPUS, "sunmoss.txt": SUNMOSS}), tmp_path / "i2")
    fresh = ix.load(tmp_path / "i2")
    assert list(index.docs) == list(fresh.docs)
    assert {p.id: (p.doc_id, p.start, p.end, p.text, p.heading, p.sentences) for p in index.passages} == \
        {p.id: (p.doc_id, p.start, p.end, p.text, p.heading, p.sentences) for p in fresh.passages}
    assert [index.docs[d].__dict__ | {"indexed_at": ""} for d in index.docs] == \
        [fresh.docs[d].__dict__ | {"indexed_at": ""} for d in fresh.docs]
    np.testing.assert_array_equal(index.sent_is_heading[np.argsort(index.sent_passage, kind="stable")].sum(),
                                  fresh.sent_is_heading.sum())
    for q in QUESTIONS:
        assert answers(a.ask(q)) == answers(fresh_a.ask(q)), q
    # once replaced articles fill the set share of the segments' bytes, they are rewritten as one
    monkeypatch.setattr(records, "REWRITE_DEAD_SHARE", 0.0)
    (corpus / "glowberry-peel.txt").write_text(GLOWBERRY_V2)  # its old record, in the first segment, is dead
    a.reindex()
    gen = ix.current_generation(tmp_path / "i")
    (one,) = gen.glob("articles-*")
    assert len(list(records.iter_segment(one))) == len(SMALL_CORPUS) + 1
    assert "thirty-five minutes" in ix.load(tmp_path / "i").docs["glowberry-peel"].text
    assert "thirty-five minutes" in a.ask(QUESTIONS[0]).answers[0].text


def _as_format_3(gen) -> None:
    """Rewrite a generation as format 3 wrote it: documents.jsonl and passages.jsonl, no centroids."""
    import json as _json

    from assistant import records

    index = ix.load(gen.parent, path=gen)
    with open(gen / "documents.jsonl", "w", encoding="utf-8") as f:
        for d in index.docs:
            f.write(_json.dumps(index.docs[d].__dict__, ensure_ascii=False) + "\n")
    with open(gen / "passages.jsonl", "w", encoding="utf-8") as f:
        for p in index.passages:
            f.write(_json.dumps({"id": p.id, "doc_id": p.doc_id, "start": p.start, "end": p.end, "heading": p.heading,
                                 "sentences": [[s.start, s.end, int(s.heading)] for s in p.sentences]}) + "\n")
    for name in [records.TABLE, records.PASSAGE_DOC, records.PASSAGE_POS, records.SENTENCE_HEADING,
                 ix.ArticleCentroids.BASE, ix.ArticleCentroids.ROWS]:
        (gen / name).unlink()
    for seg in gen.glob("articles-*"):
        seg.unlink()
    m = _json.loads((gen / "manifest.json").read_text())
    m["format"] = 3
    (gen / "manifest.json").write_text(_json.dumps(m))


def test_a_format_3_generation_is_read_and_converted_without_reembedding(tmp_path, embedder):
    from assistant import records

    corpus = write_corpus(tmp_path / "c", SMALL_CORPUS)
    a = open_assistant(corpus, tmp_path / "i")
    q = QUESTIONS[2]
    want = answers(a.ask(q))
    _as_format_3(ix.current_generation(tmp_path / "i"))
    old = ix.load(tmp_path / "i")
    assert isinstance(old.passages, list) and old.centroids is None
    assert answers(open_assistant(corpus, tmp_path / "i", build=False).ask(q)) == want  # still served
    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    r = a.reindex()
    assert r.added == ["sunmoss"] and r.embedded_passages == 1
    new = ix.load(tmp_path / "i")
    assert new.manifest["format"] == ix.FORMAT_VERSION and isinstance(new.passages, records.PassageTable)
    assert new.centroids is not None and len(new.centroids.of_row) == len(new.passages)
    _stored_centroids_are_the_vectors_mean(new)
    assert answers(open_assistant(corpus, tmp_path / "i", build=False).ask(q)) == want


def test_a_loaded_generation_keeps_its_records_when_pruned(tmp_path, embedder):
    """A server may answer from a generation that a later reindex prunes: its record segments
    are mapped when it is loaded, so its articles stay readable."""
    import shutil

    corpus = write_corpus(tmp_path / "c", SMALL_CORPUS)
    open_assistant(corpus, tmp_path / "i")
    index = ix.load(tmp_path / "i")
    shutil.rmtree(index.path)
    assert [index.passages[r].text for r in range(len(index.passages))]
    assert all(index.docs[d].text for d in index.docs)


CREME = ("Crème Brûlée Facial\nThe crème brûlée facial — a naïve name for a caramel mask — warms the skin 🍮 gently.\n"
         "A crème brûlée facial lasts twenty-five minutes at the Café Zoë spa.\nΑυτό είναι ελληνικό κείμενο για τη μάσκα.\n")


def _records(index) -> dict:
    """Every article's record and passages, as read back (indexed_at left out: it is the build's time)."""
    out = {}
    for i, d in enumerate(index.docs):
        rows = index.rows_of(d)
        out[d] = (index.docs[d].__dict__ | {"indexed_at": ""},
                  [(p.id, p.doc_id, p.start, p.end, p.text, p.heading, p.sentences)
                   for p in (index.passages[int(r)] for r in rows)])
    return out


def _sentences_read_back(index) -> None:
    """Each sentence's text as a question reads it (from the record's bytes) is its slice of the article."""
    from assistant import records

    fresh = ix.load(index.path.parent, path=index.path)  # nothing cached: every record read cold
    for row in range(len(fresh.sent_passage)):
        pr = int(fresh.sent_passage[row])
        p = index.passages[pr]
        s = p.sentences[row - int(fresh.sent_rows[pr][0])]
        assert fresh.sentence_text(row) == index.docs[p.doc_id].text[s.start : s.end], row
        assert bool(fresh.sent_is_heading[row]) == s.heading
    assert isinstance(fresh.passages, records.PassageTable)
    # a binary record gives its sentences without decoding the article or parsing its meta
    read = [e for e in fresh.docs._cache.values() if isinstance(e, records._Binary)]
    assert all(e._doc is None and e._meta is None for e in read)
    assert len(read) == (len(fresh.docs) if fresh.manifest["format"] >= 5 else 0)


def _as_format_4(gen) -> None:
    """Rewrite a generation's records as format 4 wrote them: one JSON line per article in an
    `articles-*.jsonl` segment (text and layout in the line), the table pointing into it."""
    from assistant import records

    index = ix.load(gen.parent, path=gen)
    name = "articles-20000101T000000000000Z.jsonl"
    offset, length, off = [], [], 0
    with open(gen / name, "wb") as f:
        for i, d in enumerate(index.docs.ids):
            ps = [index.docs.passage(i, pos) for pos in range(index.docs.n_passages[i])]
            line = (json.dumps({"doc": index.docs[d].__dict__, "passages": [
                [p.id, p.start, p.end, p.heading, [[s.start, s.end, int(s.heading)] for s in p.sentences]] for p in ps
            ]}, ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
            offset.append(off), length.append(len(line))
            off += len(line)
    for seg in gen.glob("articles-*.rec"):
        seg.unlink()
    t = json.loads((gen / records.TABLE).read_text())
    t.update(segments=[name], segment=[0] * len(offset), offset=offset, length=length)
    (gen / records.TABLE).write_text(json.dumps(t))
    m = json.loads((gen / "manifest.json").read_text())
    m["format"] = 4
    (gen / "manifest.json").write_text(json.dumps(m))


def test_binary_records_read_back_what_was_written():
    """A record's text, passages, sentences and headings read back equal, with characters of 1 to
    4 UTF-8 bytes (byte offsets differ from character offsets) and for an article with no passage."""
    from assistant import records
    from assistant.chunking import Passage, Sentence

    text = "Crème — naïve 🍮 text.\nΑυτό είναι.\nPlain ASCII line."
    a, b = text.index("Αυτό"), text.index("Plain")
    ps = [Passage("p1", "d", 0, a - 1, text[: a - 1], [Sentence(0, 5, True), Sentence(6, a - 1)], heading="Crème"),
          Passage("p2", "d", a, len(text), text[a:], [Sentence(a, b - 1), Sentence(b, len(text))])]
    doc = ix.DocRecord(doc_id="d", title="Crème 🍮", path="d.txt", sha256="0" * 64, indexed_at="now", text=text,
                       n_passages=2, author="Zoë")
    empty = ix.DocRecord(doc_id="e", title="", path="e.txt", sha256="1" * 64, indexed_at="now", text="")
    buf = records.encode_record(doc, ps) + records.encode_record(empty, [])
    assert len(buf) % 8 == 0
    first = records._Binary(buf, 0)
    assert [first.sentence_text(0, 0), first.sentence_text(0, 1), first.sentence_text(1, 0)] == \
        [text[0:5], text[6 : a - 1], text[a : b - 1]]  # decoded from their own bytes, no DocRecord made
    assert first._doc is None
    assert first.passages() == ps and first.doc() == doc
    assert first.sentence_text(1, 1) == text[b:]  # and from the decoded text once there is one
    got = [(d, p) for d, p in _segment(records, buf)]
    assert got == [(doc, ps), (empty, [])]
    with pytest.raises(ValueError, match="damaged"):
        records._Binary(buf, 8)


def _segment(records, buf: bytes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "articles-x.rec"
        f.write_bytes(buf)
        return list(records.iter_segment(f))


def test_a_format_4_generation_is_served_and_converted_with_records_equal(tmp_path, embedder, monkeypatch):
    """Format 4 records (JSON lines) are still served; the next reindex (an add, a change and a
    removal) writes every article as a binary record; the records, every sentence's text and
    the answers then equal a build from nothing's."""
    from assistant import records
    from assistant import subjects as sj

    monkeypatch.setattr(sj, "INCREMENTAL_MIN_PASSAGES", 1)
    monkeypatch.setattr(sj, "REDISCOVER_SHARE", 1.0)
    monkeypatch.setattr(ix, "MAX_TOMBSTONE_SHARE", 0.9)
    files = {**SMALL_CORPUS, "creme.txt": CREME}
    corpus = write_corpus(tmp_path / "c", files)
    a = open_assistant(corpus, tmp_path / "i")
    gen = ix.current_generation(tmp_path / "i")
    want = {q: answers(a.ask(q)) for q in QUESTIONS}
    built = _records(ix.load(tmp_path / "i"))
    _as_format_4(gen)
    old = ix.load(tmp_path / "i")
    assert old.manifest["format"] == 4 and all(s.endswith(".jsonl") for s in old.docs.segments)
    assert _records(old) == built
    _sentences_read_back(old)
    served = open_assistant(corpus, tmp_path / "i", build=False)
    assert {q: answers(served.ask(q)) for q in QUESTIONS} == want
    # the next reindex converts: an article added, one changed, one removed
    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    (corpus / "glowberry-peel.txt").write_text(GLOWBERRY_V2)
    removed = sorted(f for f in SMALL_CORPUS if f != "glowberry-peel.txt")[0]
    (corpus / removed).unlink()
    a.reindex()
    new = ix.load(tmp_path / "i")
    assert new.manifest["format"] == ix.FORMAT_VERSION == 6
    assert sorted(p.name for p in new.path.glob("articles-*")) == sorted(new.docs.segments)
    assert all(s.endswith(records.SEGMENT_SUFFIX) for s in new.docs.segments)
    del files[removed]
    fresh_a = open_assistant(write_corpus(tmp_path / "c2", {**files, "sunmoss.txt": SUNMOSS,
                                                           "glowberry-peel.txt": GLOWBERRY_V2}), tmp_path / "i2")
    fresh = ix.load(tmp_path / "i2")
    assert "creme" in new.docs and "🍮" in new.docs["creme"].text
    assert _records(new) == _records(fresh)
    _sentences_read_back(new)
    for q in (*QUESTIONS, "How long does a crème brûlée facial last?"):
        assert answers(a.ask(q)) == answers(fresh_a.ask(q)), q
    # a later removal links the converted segment (not rewritten); records still equal
    (corpus / "sunmoss.txt").unlink()
    a.reindex()
    later = ix.load(tmp_path / "i")
    assert sorted(later.docs.segments) == sorted(new.docs.segments)
    assert all((later.path / s).stat().st_ino == (new.path / s).stat().st_ino for s in later.docs.segments)
    (fresh_a.settings.corpus_dir / "sunmoss.txt").unlink()
    fresh_a.reindex()
    assert _records(later) == _records(ix.load(tmp_path / "i2"))
    _sentences_read_back(later)


def test_an_hnsw_generation_is_served_and_becomes_pq_and_ivf_at_the_next_change(tmp_path, embedder, monkeypatch):
    """Generations written before IVF have HNSW levels: a server reads and searches them as they
    are; the first reindex that changes the library rebuilds them as PQ and IVF (once), and the answers
    stay those of an exact build from nothing."""
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 1)
    monkeypatch.setattr(ix, "ANN_KIND", "hnsw")
    corpus = write_corpus(tmp_path / "c", SMALL_CORPUS)
    open_assistant(corpus, tmp_path / "i")
    old = ix.current_generation(tmp_path / "i")
    monkeypatch.setattr(ix, "ANN_KIND", None)  # the defaults: passages pq, sentences ivf
    a = open_assistant(corpus, tmp_path / "i", build=False)  # a server of the new code on the old generation
    index = a._current().index
    assert index.passage_store.kind == index.sentence_store.kind == "hnsw"
    _rows_find_themselves(index)
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 10**9)
    fresh = open_assistant(write_corpus(tmp_path / "c2", SMALL_CORPUS), tmp_path / "i2")
    for q in QUESTIONS[:1] + QUESTIONS[2:]:
        assert answers(a.ask(q)) == answers(fresh.ask(q)), q
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 1)
    (corpus / "sunmoss.txt").write_text(SUNMOSS)
    a.reindex()
    index = ix.load(tmp_path / "i")
    m = index.manifest["vector_search"]
    assert m["passages"]["kind"] == "pq" and m["sentences"]["kind"] == "ivf"
    assert index.passage_store.live is None and index.passage_store.pending == 0  # rebuilt, not patched
    assert (index.path / ix.SENTENCE_STORE).stat().st_ino != (old / ix.SENTENCE_STORE).stat().st_ino
    _rows_find_themselves(index)
    (tmp_path / "c2" / "sunmoss.txt").write_text(SUNMOSS)
    monkeypatch.setattr(ix, "ANN_MIN_VECTORS", 10**9)
    fresh.reindex()
    a2 = open_assistant(corpus, tmp_path / "i", build=False)
    for q in QUESTIONS:
        assert answers(a2.ask(q)) == answers(fresh.ask(q)), q

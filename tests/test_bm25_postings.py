"""BM25 kept as segments (index.BM25Level): what a reindex updates instead of rebuilding BM25.

The scores must be those bm25s's own `index` computes from the same tokens, bit for bit, after
any sequence of removals and additions, merged or not, saved and loaded or not."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest

from assistant import index as ix
from tests.fixtures_core import SEED_CORPUS


def _texts() -> list[list[str]]:
    """The seed corpus's lines, then their sentences (more rows, the same words)."""
    lines = [x for f in sorted(SEED_CORPUS.glob("*.txt")) for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
    sentences = [s for x in lines for s in x.split(". ") if s.strip()]
    return ix.tokenize(lines + sentences)


def _same_scores(level, rows: list[list[str]]) -> None:
    """Every token's scores over every row equal (float32 bits) to bm25s's own index of `rows`:
    its `get_scores` for the full scores, and the sparse paths (top k, some rows) on top."""
    want = ix._bm25s_from_tokens(rows)
    ref = want.retriever
    n = len(rows)
    assert level.n_rows == n
    toks, df = level.known()
    assert set(toks) == {t for t in ref.vocab_dict if t}
    want_toks, want_df = want.known()
    assert dict(zip(toks, df.tolist())) == dict(zip(want_toks, want_df.tolist()))
    for t in toks:
        got = ix.bm25_scores(level, [t], n)
        np.testing.assert_array_equal(got, np.asarray(ref.get_scores([t]), dtype=np.float32), err_msg=t)
    for q in (["microneedl", "prp", "skin", "skin", "session"], toks[:40], ["nosuchword", toks[0]]):
        full = ix.bm25_scores(level, q, n)
        known = [t for t in q if t in ref.vocab_dict]
        np.testing.assert_array_equal(full, np.asarray(ref.get_scores(known), dtype=np.float32) if known
                                      else np.zeros(n, np.float32))
        some = np.arange(0, n, 3)
        np.testing.assert_array_equal(ix.bm25_scores_for(level, q, some), full[some])
        np.testing.assert_array_equal(ix.bm25_scores_for(level, q, some[:2]), full[some[:2]])  # common words: rows' side
        got_rows, got = ix.bm25_topk(level, q, n, 10)
        head = np.argsort(-full, kind="stable")[:10]
        assert got_rows.tolist() == head[full[head] > 0].tolist()
        np.testing.assert_array_equal(got, full[got_rows])


def test_a_level_gives_bm25s_scores_bit_for_bit():
    rows = _texts()
    _same_scores(ix.BM25Level.from_tokens(rows), rows)
    _same_scores(ix._bm25s_from_tokens(rows), rows)  # the bm25s arrays of older generations, served the same


def test_removing_and_adding_rows_equals_a_build_of_the_result(monkeypatch, tmp_path):
    """Tombstones, a delta, merges (forced by a small threshold at some steps), saved and loaded
    between steps: always the scores of a build from nothing."""
    rows = _texts()
    rng = random.Random(4)
    assert len(rows) > 300
    current = rows[:200]
    level = ix.BM25Level.from_tokens(current)
    extra = rows[200:]
    merges = 0
    for step in range(12):
        keep = sorted(rng.sample(range(len(current)), k=len(current) - rng.randint(0, 25)))
        before = level
        level = level.keep(np.array(keep))
        assert level.main is before.main  # removing never rewrites the main: tombstones
        current = [current[i] for i in keep]
        add = [extra.pop() for _ in range(min(len(extra), rng.randint(0, 30) if step < 11 else len(extra)))]
        level = level.extend(add)
        assert level.main is before.main and len(level.delta_doclen) >= len(add)  # added rows: the delta
        current += add
        monkeypatch.setattr(ix, "BM25_DELTA_MIN", 10 ** 9 if step % 3 else 50)
        settled = level.settled()
        merges += settled is not level
        level = settled
        _same_scores(level, current)
        assert sorted(map(sorted, level.postings_all().token_rows())) == sorted(map(sorted, current))
        if step % 2:  # through a generation's files and back
            folder = tmp_path / f"g{step}"
            level.save(folder)
            level = ix.BM25Level.load(folder)
            _same_scores(level, current)
    assert merges >= 2 and not extra


def test_tombstones_past_their_share_are_merged(monkeypatch):
    rows = _texts()
    monkeypatch.setattr(ix, "BM25_DELTA_MIN", 10 ** 9)
    level = ix.BM25Level.from_tokens(rows)
    few = level.keep(np.arange(1, level.n_rows))
    assert not few.due() and few.rowmap is not None
    many = level.keep(np.arange(int(level.n_rows * (1 - ix.MAX_TOMBSTONE_SHARE)) - 1))
    assert many.due()
    merged = many.settled()
    assert merged.rowmap is None and merged.n_main == many.n_rows and not len(merged.delta_doclen)
    _same_scores(merged, rows[: many.n_rows])


def test_a_saved_main_is_linked_by_the_next_generation_not_rewritten(tmp_path):
    rows = _texts()
    ix.BM25Level.from_tokens(rows[:200]).save(tmp_path / "a")
    a = ix.BM25Level.load(tmp_path / "a")
    b = a.keep(np.arange(3, a.n_rows)).extend(rows[200:230])
    assert len(b.delta_doclen) == 30
    b.save(tmp_path / "b")
    for f in ix.MAIN_FILES:
        assert os.path.samefile(tmp_path / "a" / f, tmp_path / "b" / f), f
    back = ix.BM25Level.load(tmp_path / "b")
    assert back.rowmap is not None and len(back.delta_doclen) == 30
    _same_scores(back, rows[3:230])
    # each entry's (tf, row length) pair as a 2-byte code; a frequency past 65,535 is a pair too
    assert np.load(tmp_path / "a" / "main.code.npy").dtype == np.uint16
    big = ix.BM25Level.from_tokens([["w"] * 70_000, ["w", "x"]])
    assert big.pairs.tolist() == [[1, 2], [70_000, 70_000]]
    _same_scores(big, [["w"] * 70_000, ["w", "x"]])


def write_format_5(rows: list[list[str]], folder) -> None:
    """A BM25 level as format 5 wrote it: bm25s's arrays (token ids in the postings' order, a
    score per entry) and beside them tf.npy and doclen.npy."""
    import bm25s

    p = ix.Postings.from_tokens(rows).compact()
    level = p.level()
    r = bm25s.BM25()
    data = np.concatenate([level.postings(t)[1] for t in range(len(p.vocab))] or [np.zeros(0, np.float32)])
    r.scores = {"data": data, "indices": np.asarray(p.indices, dtype=np.int32),
                "indptr": np.asarray(p.indptr, dtype=np.int64), "num_docs": p.n_rows}
    r.vocab_dict = {t: i for i, t in enumerate(p.vocab)}
    r.vocab_dict[""] = len(p.vocab)  # as bm25s adds it (no column)
    r.unique_token_ids_set = set(r.vocab_dict.values())
    r.nonoccurrence_array = None
    r.save(folder, show_progress=False)
    np.save(folder / ix.BM25_TF, np.asarray(p.tf, dtype=np.float32))
    np.save(folder / ix.BM25_DOCLEN, np.asarray(p.doclen, dtype=np.int32))


def test_a_format_5_level_is_served_and_converted(tmp_path):
    """bm25s's arrays with tf.npy / doclen.npy beside them (format 5): served as they are, and
    read as one main segment by the next reindex."""
    rows = _texts()
    write_format_5(rows, tmp_path / "lvl")
    served = ix._load_bm25(tmp_path / "lvl")
    assert isinstance(served, ix.ScoredLevel)
    _same_scores(served, rows)
    back = ix.load_postings(served, tmp_path / "lvl")
    assert back is not None
    _same_scores(back.level(), rows)


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_levels(n):
    rows = [["alpha", "beta"]][:n]
    level = ix.BM25Level.from_tokens(rows)
    assert level.n_rows == n
    assert ix.bm25_topk(level, ["alpha"], n, 5)[0].tolist() == ([0] if n else [])
    assert ix.bm25_scores(level, ["alpha"], n).shape == (n,)
    assert level.keep(np.zeros(0, np.int64)).n_rows == 0

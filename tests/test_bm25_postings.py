"""BM25 kept as postings (index.Postings): what a reindex updates instead of rebuilding BM25.

The scores must be those bm25s's own `index` computes from the same tokens, bit for bit, after
any sequence of removals and additions."""
from __future__ import annotations

import random

import numpy as np

from assistant import index as ix
from tests.fixtures_core import SEED_CORPUS


def _texts() -> list[list[str]]:
    lines = [x for f in sorted(SEED_CORPUS.glob("*.txt")) for x in f.read_text(encoding="utf-8").splitlines()]
    return ix.tokenize([x for x in lines if x.strip()])


def _same_scores(r, want) -> None:
    """Every token's scores over every row, equal (float32 bits)."""
    n = want.scores["num_docs"]
    assert r.scores["num_docs"] == n
    assert set(r.vocab_dict) == set(want.vocab_dict)
    for t in want.vocab_dict:
        if not t:
            continue
        np.testing.assert_array_equal(ix.bm25_scores(r, [t], n), ix.bm25_scores(want, [t], n), err_msg=t)
    q = ["microneedl", "prp", "skin", "skin", "session"]
    np.testing.assert_array_equal(ix.bm25_scores(r, q, n), ix.bm25_scores(want, q, n))
    rows = np.arange(0, n, 3)
    np.testing.assert_array_equal(ix.bm25_scores_for(r, q, rows), ix.bm25_scores_for(want, q, rows))


def test_postings_give_bm25s_scores_bit_for_bit(monkeypatch):
    from assistant.reindex import _bm25

    rows = _texts()
    _same_scores(ix.Postings.from_tokens(rows).retriever(), _bm25(rows))
    for block in (1, 7, 1000):  # scored a block at a time: blocks that cut tokens' postings anywhere
        monkeypatch.setattr(ix, "SCORE_BLOCK", block)
        _same_scores(ix.Postings.from_tokens(rows).retriever(), _bm25(rows))


def test_removing_and_adding_rows_equals_a_build_of_the_result():
    from assistant.reindex import _bm25

    rows = _texts()
    rng = random.Random(4)
    current = rows[:150]
    p = ix.Postings.from_tokens(current)
    extra = rows[150:]
    for step in range(6):
        keep = sorted(rng.sample(range(len(current)), k=len(current) - rng.randint(0, 25)))
        p = p.keep(np.array(keep))
        current = [current[i] for i in keep]
        add = [extra.pop() for _ in range(min(len(extra), rng.randint(0, 30)))]
        p = p.extend(add)
        current += add
        r = p.retriever()
        _same_scores(r, _bm25(current))
        assert sorted(map(sorted, p.token_rows())) == sorted(map(sorted, current))


def test_postings_round_trip_through_a_generation(tmp_path):
    rows = _texts()
    r = ix.Postings.from_tokens(rows).retriever()
    r.save(tmp_path / "lvl", show_progress=False)
    r.postings.save(tmp_path / "lvl")
    back = ix.load_postings(ix._load_bm25(tmp_path / "lvl"), tmp_path / "lvl")
    assert back is not None
    _same_scores(back.retriever(), r)

"""Evidence from the whole article (issue 10): the article's own BM25 as a prior (w_doc_bm25) and
the question's words weighted within their article (w_local, retrieval.LOCAL_WITHIN). Both are
opt-in settings, off by default. Real model and index over a small corpus written here."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from assistant import retrieval
from assistant.config import Settings
from assistant.retrieval import Retriever, article_bm25, article_rows
from tests.fixtures_core import open_assistant, write_corpus

# A long article about one subject (every passage names it) and two short ones that mention
# its words in passing.
_PARAGRAPHS = [
    "Verrow tonic is a herbal drink from the northern coast. Verrow tonic has been brewed in the "
    "harbour towns for two hundred years, and every family keeps its own recipe for it.",
    "Verrow tonic is brewed from nettle leaves gathered in early spring. The leaves are dried on "
    "racks for a week before brewing begins, which gives Verrow tonic its colour.",
    "Verrow tonic is sweetened with heather honey, added while the brew is still warm. Brewers say "
    "the honey softens the bitterness of the nettles in Verrow tonic.",
    "Verrow tonic is bottled cold in green glass after three days. Bottles of Verrow tonic keep "
    "for a year in a cool cellar, and the taste deepens with age.",
    "Verrow tonic is drunk at harvest festivals. Visitors buy Verrow tonic at the market stalls "
    "along the quay, and the harbour museum shows the old copper kettles.",
]
CORPUS = {
    "verrow.txt": "Verrow Tonic\n\n" + "\n\n".join(_PARAGRAPHS) + "\n",
    "market.txt": "The Harbour Market\n\nThe harbour market sells fish, bread and jars of honey to "
                  "tourists every Saturday morning.\n\nStalls open at dawn and close at noon.\n",
    "cellars.txt": "Old Cellars\n\nCool cellars under the quay once stored wine and cheese for the "
                   "merchants.\n\nMost are now closed to visitors.\n",
}


@pytest.fixture(scope="module")
def verrow(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("artprior")
    a = open_assistant(write_corpus(root / "corpus", CORPUS), root / "index")
    return a


def _index(a):
    return a._current().index


def _retriever(a, **fields) -> Retriever:
    return Retriever(_index(a), replace(Settings(), **fields))


def _query(r: Retriever, a, text: str):
    return r.prepare(text, a._embedder.encode_query(text))


def test_defaults_are_off():
    s = Settings()
    assert s.w_doc_bm25 == 0.0 and s.w_local == 0.0


def test_article_bm25_has_one_row_per_article_and_finds_the_article(verrow):
    ix = _index(verrow)
    of_row, ids = article_rows(ix)
    assert len(of_row) == len(ix.passages)
    assert sorted(ids) == sorted({p.doc_id for p in ix.passages})
    assert all(ids[of_row[r]] == ix.passages[r].doc_id for r in range(len(ix.passages)))
    bm = article_bm25(ix)
    assert article_bm25(ix) is bm  # built once, kept on the Index
    from assistant.index import bm25_scores_for, tokenize

    scores = bm25_scores_for(bm, tokenize(["Verrow tonic honey"])[0], np.arange(len(ids)))
    assert ids[int(np.argmax(scores))] == "verrow"


def test_article_prior_is_the_same_for_an_articles_passages_and_in_0_1(verrow):
    a = verrow
    r = _retriever(a, w_doc_bm25=0.1)
    q = _query(r, a, "Where are jars of honey sold?")
    cand = np.arange(len(_index(a).passages))
    prior = r._article_bm25(q, None, cand)
    of_row, ids = article_rows(_index(a))
    assert prior.min() >= 0.0 and prior.max() == pytest.approx(1.0)
    for d in set(of_row.tolist()):
        assert len(set(prior[of_row == d].tolist())) == 1
    # rank form: the best article 1, the next 1/2, ...
    retrieval_rank = retrieval.DOC_BM25_RANK
    try:
        retrieval.DOC_BM25_RANK = True
        ranked = r._article_bm25(q, None, cand)
    finally:
        retrieval.DOC_BM25_RANK = retrieval_rank
    assert ranked.max() == pytest.approx(1.0)
    assert set(np.round(ranked, 4).tolist()) <= {1.0, 0.5, round(1 / 3, 4), 0.0}


def test_article_prior_lifts_the_long_article_over_a_stray_passage(verrow):
    a = verrow
    q_text = "Is Verrow tonic sweetened with honey?"
    on = _retriever(a, w_doc_bm25=0.2)
    hits = on.search(_query(on, a, q_text), k=3)
    ix = _index(a)
    assert ix.passages[hits[0].row].doc_id == "verrow"
    assert all(0.0 <= h.score <= 1.0 + 1e-6 for h in hits), [h.score for h in hits]


def test_local_weights_within_the_article(verrow):
    a = verrow
    ix = _index(a)
    r = _retriever(a, w_local=0.2)
    q = _query(r, a, "Is Verrow tonic sweetened with heather honey?")
    of_row, ids = article_rows(ix)
    cand = np.arange(len(ix.passages))
    local = r._local(q, cand)
    verrow_rows = np.flatnonzero(np.array([ids[d] for d in of_row]) == "verrow")
    # within the long article the passage with honey and heather (words the rest of it lacks) is
    # its best: 1.0; "Verrow tonic", in every passage, weighs nothing
    best = verrow_rows[int(np.argmax(local[verrow_rows]))]
    assert local[best] == pytest.approx(1.0)
    assert "heather" in ix.passages[best].text
    # every article's best candidate gets the same 1.0: no article rises over another
    for d in set(of_row.tolist()):
        assert local[of_row == d].max() == pytest.approx(1.0)
    hits = r.search(q, k=3)
    assert "heather" in ix.passages[hits[0].row].text


def test_local_weights_min_max_when_not_within(verrow, monkeypatch):
    a = verrow
    monkeypatch.setattr(retrieval, "LOCAL_WITHIN", False)
    r = _retriever(a, w_local=0.1)
    q = _query(r, a, "Is Verrow tonic sweetened with heather honey?")
    local = r._local(q, np.arange(len(_index(a).passages)))
    assert local.min() == pytest.approx(0.0) and local.max() == pytest.approx(1.0)


def test_off_changes_nothing(verrow):
    a = verrow
    base = _retriever(a)
    zero = _retriever(a, w_doc_bm25=0.0, w_local=0.0)
    q = _query(base, a, "When is Verrow tonic bottled?")
    assert [(h.row, h.score) for h in base.search(q, k=5)] == [(h.row, h.score) for h in zero.search(q, k=5)]

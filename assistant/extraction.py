"""From ranked passages to answers: the answering sentences, de-duplication, abstention.

Nothing is generated: an answer is a passage of an article, verbatim, with offsets.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .config import Settings
from .index import Index
from .models import AlsoIn, Answer, Source, Span
from .retrieval import Hit, Query

_WORD = re.compile(r"\w+")


def _norm_tokens(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.lower()) if len(w) > 2)


def highlight(index: Index, hit: Hit, ratio: float, max_sentences: int = 2) -> list[Span]:
    """The sentence(s) that answer: the best non-heading sentence, and a neighbour nearly as good."""
    p = index.passages[hit.row]
    scores = np.asarray(hit.sentence_scores, dtype=np.float32).copy()
    for j, s in enumerate(p.sentences):
        if s.heading:
            scores[j] = -1.0
    if scores.size == 0 or scores.max() < 0:
        return []
    best = int(np.argmax(scores))
    chosen = [best]
    top = float(scores[best])
    for j in np.argsort(-scores)[1:max_sentences]:
        if scores[j] >= ratio * top and top > 0 and abs(int(j) - best) == 1:
            chosen.append(int(j))
    spans = sorted((p.sentences[j].start - p.start, p.sentences[j].end - p.start) for j in chosen)
    return [Span(start=a, end=b) for a, b in spans]


def _sentence_sets(index: Index, row: int) -> list[frozenset[str]]:
    """Word sets of a passage's sentences, computed once per loaded index."""
    cache = index.__dict__.setdefault("_sentence_sets", {})
    sets = cache.get(row)
    if sets is None:
        p = index.passages[row]
        text = index.docs[p.doc_id].text
        sets = cache[row] = [_norm_tokens(text[s.start : s.end]) for s in p.sentences if not s.heading]
    return sets


def near_duplicate(index: Index, a: int, b: int, threshold: float = 0.8) -> bool:
    """True when most of one passage's sentences appear, nearly word for word, in the other.

    Works across different chunk boundaries, which is how copied paragraphs usually show up.
    """
    if a == b:
        return True
    sa, sb = _sentence_sets(index, a), _sentence_sets(index, b)
    if not sa or not sb:
        return False

    def covered(xs, ys) -> float:
        total = sum(len(x) for x in xs) or 1
        got = 0
        for x in xs:
            if any(len(x & y) / max(1, len(x | y)) >= threshold for y in ys):
                got += len(x)
        return got / total

    return max(covered(sa, sb), covered(sb, sa)) >= 0.6


def dedupe(index: Index, hits: list[Hit], limit: int | None = None) -> list[tuple[Hit, list[Hit]]]:
    """Group near-duplicate passages; the best-scoring one leads, the others become `also_in`.
    With `limit`, at most that many groups are formed (later hits only join them)."""
    groups: list[tuple[Hit, list[Hit]]] = []
    for h in hits:
        for lead, others in groups:
            if any(near_duplicate(index, m.row, h.row) for m in (lead, *others)):
                others.append(h)  # to_answer lists each other article once, never the lead's own
                break
        else:
            if limit is None or len(groups) < limit:
                groups.append((h, []))
    return groups


def to_answer(index: Index, hit: Hit, others: list[Hit], settings: Settings, about: str | None = None) -> Answer:
    p = index.passages[hit.row]
    d = index.docs[p.doc_id]
    also = []
    for o in others:
        od = index.docs[index.passages[o.row].doc_id]
        if od.doc_id != d.doc_id and all(a.doc_id != od.doc_id for a in also):
            also.append(AlsoIn(doc_id=od.doc_id, title=od.title, path=od.path))
    return Answer(
        text=d.text[p.start : p.end],
        highlight=highlight(index, hit, settings.highlight_ratio),
        score=round(hit.score, 4),
        source=Source(doc_id=d.doc_id, title=d.title, path=d.path, start=p.start, end=p.end),
        also_in=also,
        about=about,
    )


# --- abstention ------------------------------------------------------------------------------

@dataclass
class Evidence:
    """What the abstention decision looks at, for the best passage of a question."""

    dense: float  # cosine of the best passage
    dense_sentence: float  # cosine of the best sentence
    coverage: float  # share of the question's content words (IDF-weighted) found in the passage
    unknown: float  # share of the question's content words that appear nowhere in the corpus


# Logistic model over Evidence, fitted on XQuAD (answerable), off-topic questions and XQuAD
# questions asked of an index without their article (near-topic); the seed corpus is held out.
# Refit with `python tests/calibrate_abstention.py` (README, "Abstention").
ABSTAIN_WEIGHTS = {"bias": -3.045, "dense": 2.166, "dense_sentence": 2.211, "coverage": 2.885, "unknown": -1.453}


def confidence(e: Evidence, weights: dict | None = None) -> float:
    w = weights or ABSTAIN_WEIGHTS
    z = (
        w["bias"] + w["dense"] * e.dense + w["dense_sentence"] * e.dense_sentence
        + w["coverage"] * e.coverage + w["unknown"] * e.unknown
    )
    return 1.0 / (1.0 + math.exp(-z))


def evidence(index: Index, q: Query, hit: Hit | None) -> Evidence:
    terms = [t for t in q.tokens]
    if not terms or hit is None:
        return Evidence(hit.dense if hit else 0.0, hit.dense_sentence if hit else 0.0, 0.0, 1.0 if not hit else 0.0)
    vocab = index.vocab
    unknown = sum(1 for t in terms if t not in vocab) / len(terms)
    p = index.passages[hit.row]
    d = index.docs[p.doc_id]
    from .index import passage_bm25_text, tokenize

    have = set(tokenize([passage_bm25_text(p, d.title, d.text)])[0])
    idf = index.idf
    weights = [idf.get(t, idf_max(index)) for t in terms]
    eq = q.equivalents or {}
    covered = sum(w for t, w in zip(terms, weights) if t in have or have & eq.get(t, frozenset())) / (sum(weights) or 1.0)
    return Evidence(hit.dense, hit.dense_sentence, covered, unknown)


def idf_max(index: Index) -> float:
    return math.log(1 + len(index.passages) + 0.5)


ABSTAIN_MESSAGE = "The articles do not answer this question."


def should_abstain(index: Index, q: Query, hits: list[Hit], settings: Settings) -> bool:
    """True when even the best passage is unlikely to answer (calibrated, see README)."""
    if not hits:
        return True
    return confidence(evidence(index, q, hits[0])) < settings.abstain_threshold


def answers_from_hits(index: Index, hits: list[Hit], settings: Settings, top_k: int, about: str | None = None) -> list[Answer]:
    """The top_k distinct passages as answers; near-duplicates fold into `also_in`."""
    return [to_answer(index, h, others, settings, about) for h, others in dedupe(index, hits, limit=top_k)]

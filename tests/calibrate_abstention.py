"""Fit and report the abstention model (not a test; run: `.venv/bin/python tests/calibrate_abstention.py`).

Training data, none of it from the seed corpus:
  answerable   XQuAD questions against an index of the XQuAD paragraphs;
  unanswerable tests/data/offtopic.jsonl against that index, and the questions of half of the
               XQuAD articles against an index of the other half (near-topic: same kind of text,
               answer absent).
Held out for the report: the seed corpus with ../shared/eval/dev.jsonl, tests/data/seed_questions.jsonl
(answerable), tests/data/offtopic.jsonl and tests/data/neartopic.jsonl (should abstain).
Prints the fitted weights (paste into extraction.ABSTAIN_WEIGHTS) and the trade-off table.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant import Assistant, Settings  # noqa: E402
from assistant import evaluation as ev  # noqa: E402
from assistant.extraction import Evidence, confidence, evidence  # noqa: E402

XQUAD = ROOT.parent / "shared" / "eval" / "xquad"
DEV = ROOT.parent / "shared" / "eval" / "dev.jsonl"
DATA = ROOT / "tests" / "data"
FEATURES = ["dense", "dense_sentence", "coverage", "unknown"]


def questions(path: Path, answerable: bool | None = None) -> list[str]:
    out = []
    for case in ev.load_cases(path):
        t = case["turns"][0]
        if answerable is None or bool(t.get("expect_abstain")) != answerable:
            out.append(t["q"])
    return out


def features(a: Assistant, qs: list[str]) -> np.ndarray:
    loaded = a._current()
    rows = []
    for text in qs:
        q = loaded.retriever.prepare(text, a.embedder.encode_query(text))
        hits = loaded.retriever.search(q, k=1)
        e = evidence(loaded.index, q, hits[0] if hits else None)
        rows.append([getattr(e, f) for f in FEATURES])
    return np.array(rows, dtype=np.float64)


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 3000) -> np.ndarray:
    """Class-balanced logistic regression by gradient descent (bias first)."""
    Xb = np.hstack([np.ones((len(X), 1)), X])
    w = np.zeros(Xb.shape[1])
    sw = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-Xb @ w))
        g = Xb.T @ (sw * (p - y)) / len(y) + l2 * np.r_[0, w[1:]]
        w -= 1.0 * g
    return w


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="calibrate-"))
    try:
        base = Settings()
        # XQuAD, whole and half
        full_c, half_c = tmp / "xq", tmp / "xq-half"
        ev.write_squad_corpus(XQUAD, full_c)
        xq = Assistant(replace(base, corpus_dir=full_c, index_dir=tmp / "xq-index"))
        xq.reindex(progress=True)
        titles = sorted({json.loads(l)["title"] for l in (XQUAD / "corpus.jsonl").read_text().splitlines() if l.strip()})
        held = set(titles[::2])
        paragraphs = [json.loads(l) for l in (XQUAD / "corpus.jsonl").read_text().splitlines() if l.strip()]
        gone = {p["_id"] for p in paragraphs if p["title"] in held}
        shutil.copytree(full_c, half_c)
        shutil.copytree(tmp / "xq-index", tmp / "xq-half-index")
        for pid in gone:
            (half_c / f"{pid}.md").unlink()
        half = Assistant(replace(base, corpus_dir=half_c, index_dir=tmp / "xq-half-index"))
        half.reindex()  # removes passages only: nothing to embed
        xq_qs = [json.loads(l) for l in (XQUAD / "questions.jsonl").read_text().splitlines() if l.strip()]
        pos = features(xq, [q["question"] for q in xq_qs])
        off = questions(DATA / "offtopic.jsonl")
        neg_off = features(xq, off)
        neg_half = features(half, [q["question"] for q in xq_qs if q["doc_id"] in gone])
        X = np.vstack([pos, neg_off, neg_half])
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg_off) + len(neg_half))]
        w = fit_logistic(X, y)
        weights = {"bias": round(float(w[0]), 3), **{f: round(float(v), 3) for f, v in zip(FEATURES, w[1:])}}
        print("ABSTAIN_WEIGHTS =", json.dumps(weights))

        # held out: the seed corpus
        seeds = Assistant.open(settings=replace(base, index_dir=tmp / "seed-index"), require_index=False)
        seeds.reindex()
        sets = {
            "XQuAD answerable (train)": (features(xq, [q["question"] for q in xq_qs]), True),
            "XQuAD off-topic (train)": (neg_off, False),
            "XQuAD other half (train)": (neg_half, False),
            "seeds dev answerable": (features(seeds, questions(DEV, answerable=True)), True),
            "seeds own answerable": (features(seeds, questions(DATA / "seed_questions.jsonl")), True),
            "seeds dev off-topic": (features(seeds, questions(DEV, answerable=False)), False),
            "seeds off-topic": (features(seeds, off), False),
            "seeds near-topic": (features(seeds, questions(DATA / "neartopic.jsonl")), False),
        }
        print("\n| threshold | " + " | ".join(sets) + " |")
        print("|---" * (len(sets) + 1) + "|")
        for th in (0.3, 0.4, 0.5, 0.6, 0.7):
            cells = []
            for X_, answerable in sets.values():
                conf = np.array([confidence(Evidence(*row), weights) for row in X_])
                answered = (conf >= th).mean()
                cells.append(f"{answered:.2f} answered" if answerable else f"{1 - answered:.2f} abstained")
            print(f"| {th} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

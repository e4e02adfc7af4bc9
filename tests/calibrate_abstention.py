"""Fit and report the abstention model (not a test; run: `.venv/bin/python tests/calibrate_abstention.py`).

Training data, none of it an evaluation set: our own hand-written sets over the seed corpus,
asked as the product asks them (a conversation turn with its history):
  answerable   tests/data/seed_questions.jsonl, the answerable turns of tests/conversations.jsonl;
  unanswerable tests/data/offtopic.jsonl, tests/data/neartopic.jsonl, the off-topic turns of
               tests/conversations.jsonl.
Held out (reported, never fitted on): ../shared/eval/dev.jsonl over the seed corpus; XQuAD
answerable questions, XQuAD questions asked with their own article taken out of the ranking
(near-topic) and the off-topic set over XQuAD; the MTRAG-dev last turns read with their history
(ANSWERABLE, UNANSWERABLE). XQuAD and MTRAG use the kept indexes of tests/ablate.py in ABLATE_DIR
(default /tmp/ablate), read only; a set whose index is not there is skipped. Each own set is also
reported from a model fitted without it (leave-one-set-out), the honest figure for a set that
trained the shipped model.

Prints the fitted weights (paste into extraction.ABSTAIN_WEIGHTS) and the trade-off table.
    env  THRESHOLDS=0.3,0.4,...   SETS=seed,xquad,mtrag[,covid]   L2=0.01
         FIT=dense,coverage,...   the Evidence fields the model weighs (default: the shipped model's)
         CACHE=file.pkl           keep the collected evidence there and reuse it (fits only)
covid adds the covidqa-dev questions (all answerable, held out) from ABLATE_DIR's covid-index.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from assistant import conversation  # noqa: E402
from assistant import evaluation as ev  # noqa: E402
from assistant.assistant import Assistant  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.embedder import get_embedder  # noqa: E402
from assistant.extraction import ABSTAIN_MODEL, ABSTAIN_MODELS, Evidence, confidence, judged  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"
DATA = ROOT / "tests" / "data"
WORK = Path(os.environ.get("ABLATE_DIR", "/tmp/ablate"))
FEATURES = [f.name for f in fields(Evidence)]
OWN = ("own answerable", "own conversations answerable", "own off-topic", "own near-topic", "own conversations off-topic")

_RECORD: list = []
_DROP: list = [None]  # an article (doc_id prefix) to take out of the ranking


def _recorder(index, q, hits, settings, embedder=None):
    """Stands in for should_abstain while asking: records the evidence, never abstains."""
    if _DROP[0] is not None:
        hits = [h for h in hits if not index.passages[h.row].doc_id.startswith(_DROP[0])]
    _RECORD.append(judged(index, q, hits, embedder) if hits else None)
    return False


def _ask(a: Assistant, question: str, history: list[str], drop: str | None = None) -> list[float] | None:
    _RECORD.clear()
    _DROP[0] = drop
    try:
        a.ask(question[: a.settings.max_question_chars], history[-a.settings.max_history :], top_k=5)
    finally:
        _DROP[0] = None
    e = _RECORD[-1] if _RECORD else None
    return None if e is None else [getattr(e, f) for f in FEATURES]


def _cases(a: Assistant, path: Path, answerable: bool) -> np.ndarray:
    """Every turn of a case file with the wanted label, asked with the earlier turns as history."""
    rows = []
    for case in ev.load_cases(path):
        history: list[str] = []
        for t in case["turns"]:
            if bool(t.get("expect_abstain")) != answerable and not t.get("context"):
                rows.append(_ask(a, t["q"], history))
            history.append(t["q"])
    return np.array([r for r in rows if r is not None], dtype=np.float64).reshape(-1, len(FEATURES))


def collect(settings: Settings, embedder, wanted: set[str]) -> dict[str, tuple[np.ndarray, bool]]:
    sets: dict[str, tuple[np.ndarray, bool]] = {}
    conversation.should_abstain = _recorder
    if "seed" in wanted:
        tmp = Path(tempfile.mkdtemp(prefix="calibrate-"))
        a = Assistant(replace(settings, corpus_dir=ROOT / "corpus", index_dir=tmp / "seed-index"), embedder=embedder)
        a.reindex()
        sets["own answerable"] = (_cases(a, DATA / "seed_questions.jsonl", True), True)
        sets["own conversations answerable"] = (_cases(a, ROOT / "tests" / "conversations.jsonl", True), True)
        sets["own off-topic"] = (_cases(a, DATA / "offtopic.jsonl", False), False)
        sets["own near-topic"] = (_cases(a, DATA / "neartopic.jsonl", False), False)
        sets["own conversations off-topic"] = (_cases(a, ROOT / "tests" / "conversations.jsonl", False), False)
        sets["dev answerable (held out)"] = (_cases(a, EVAL / "dev.jsonl", True), True)
        sets["dev off-topic (held out)"] = (_cases(a, EVAL / "dev.jsonl", False), False)
    off = [c["turns"][0]["q"] for c in ev.load_cases(DATA / "offtopic.jsonl")]
    if "xquad" in wanted and (WORK / "xquad-index" / "CURRENT").exists():
        a = Assistant.open(settings=replace(settings, corpus_dir=WORK / "xquad-corpus", index_dir=WORK / "xquad-index"),
                           embedder=embedder)
        qs = ev.squad_questions(EVAL / "xquad")
        corpus = [json.loads(x) for x in (EVAL / "xquad" / "corpus.jsonl").read_text().splitlines() if x.strip()]
        title = {c["_id"]: c["title"] for c in corpus}
        held = set(sorted(set(title.values()))[::2])
        sets["xquad answerable (held out)"] = (np.array([_ask(a, q["question"], []) for q in qs]), True)
        near = [_ask(a, q["question"], [], drop=q["doc_id"].split("-")[0] + "-") for q in qs if title[q["doc_id"]] in held]
        sets["xquad own article out (held out)"] = (np.array([r for r in near if r is not None]), False)
        sets["xquad off-topic (held out)"] = (np.array([_ask(a, t, []) for t in off]), False)
    if "covid" in wanted and (WORK / "covid-index" / "CURRENT").exists():
        a = Assistant.open(settings=replace(settings, corpus_dir=WORK / "covid-corpus", index_dir=WORK / "covid-index"),
                           embedder=embedder)
        qs = ev.squad_questions(EVAL / "covidqa-dev")
        sets["covid answerable (held out)"] = (np.array([r for r in (_ask(a, q["question"], []) for q in qs) if r is not None]), True)
    if "mtrag" in wanted and (WORK / "mtrag-index" / "CURRENT").exists():
        a = Assistant.open(settings=replace(settings, corpus_dir=WORK / "mtrag-corpus", index_dir=WORK / "mtrag-index"),
                           embedder=embedder)
        qs = ev.mtrag_queries(EVAL / "mtrag-dev")
        for label in ("ANSWERABLE", "UNANSWERABLE"):
            rows = [_ask(a, q["question"], q["history"]) for q in qs if q["label"] == label]
            sets[f"mtrag {label} (held out)"] = (np.array([r for r in rows if r is not None]), label == "ANSWERABLE")
    return sets


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 5000) -> np.ndarray:
    """Class-balanced logistic regression by gradient descent (bias first)."""
    Xb = np.hstack([np.ones((len(X), 1)), X])
    w = np.zeros(Xb.shape[1])
    sw = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-Xb @ w))
        g = Xb.T @ (sw * (p - y)) / len(y) + l2 * np.r_[0, w[1:]]
        w -= 1.0 * g
    return w


FIT = [f for f in os.environ.get("FIT", ",".join(k for k in ABSTAIN_MODELS[ABSTAIN_MODEL] if k != "bias")).split(",")]


def fit(sets: dict, names: list[str], l2: float) -> dict:
    cols = [FEATURES.index(f) for f in FIT]
    X = np.vstack([sets[n][0][:, cols] for n in names])
    y = np.concatenate([np.full(len(sets[n][0]), float(sets[n][1])) for n in names])
    w = fit_logistic(X, y, l2)
    return {"bias": round(float(w[0]), 3), **{f: round(float(v), 3) for f, v in zip(FIT, w[1:])}}


def share(X: np.ndarray, answerable: bool, weights: dict, th: float) -> str:
    conf = np.array([confidence(Evidence(*row), weights) for row in X])
    answered = float((conf >= th).mean()) if len(conf) else float("nan")
    return f"{answered:.3f} answered" if answerable else f"{1 - answered:.3f} abstained"


def main() -> None:
    wanted = set(os.environ.get("SETS", "seed,xquad,mtrag").split(","))
    l2 = float(os.environ.get("L2", "0.01"))
    ths = [float(x) for x in os.environ.get("THRESHOLDS", "0.3,0.4,0.5,0.6,0.7").split(",")]
    settings = Settings()
    cache = os.environ.get("CACHE")
    if cache and Path(cache).exists():
        import pickle

        names, sets = pickle.loads(Path(cache).read_bytes())
        if names != FEATURES:
            sys.exit(f"{cache} holds {names}, Evidence now has {FEATURES}: remove it to collect again")
    else:
        sets = collect(settings, get_embedder(), wanted)
        if cache:
            import pickle

            Path(cache).write_bytes(pickle.dumps((FEATURES, sets)))
    train = [n for n in OWN if n in sets]
    weights = fit(sets, train, l2)
    print("ABSTAIN_WEIGHTS =", json.dumps(weights))
    print(f"\nsettings: abstain_threshold {settings.abstain_threshold}, w_context {settings.w_context}; "
          f"trained on: {', '.join(train)}")
    print("\n| threshold | " + " | ".join(sets) + " |")
    print("|---" * (len(sets) + 1) + "|")
    for th in ths:
        print(f"| {th} | " + " | ".join(share(X, ans, weights, th) for X, ans in sets.values()) + " |")
    pair = ("mtrag ANSWERABLE (held out)", "mtrag UNANSWERABLE (held out)")
    if all(n in sets for n in pair):
        # how far these signals can go on MTRAG at all: a model fitted on MTRAG itself (in-sample,
        # an upper bound, never shipped), at the threshold that turns away 5% of its answerable turns
        w = fit(sets, list(pair), l2)
        conf = [np.array([confidence(Evidence(*row), w) for row in sets[n][0]]) for n in pair]
        th = float(np.quantile(conf[0], 0.05))
        print(f"\nupper bound on MTRAG (fitted on MTRAG itself): at 5% of ANSWERABLE turned away, "
              f"{float((conf[1] < th).mean()):.3f} of UNANSWERABLE abstain")
    print(f"\nleave-one-set-out at {settings.abstain_threshold} (each own set, from a model fitted without it):")
    for n in train:
        w = fit(sets, [m for m in train if m != n], l2)
        print(f"  {n}: {share(sets[n][0], sets[n][1], w, settings.abstain_threshold)}")


if __name__ == "__main__":
    main()

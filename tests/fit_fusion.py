"""Fit the passage fusion weights (not a test; README, "Fusion weights, fitted").

    python tests/fit_fusion.py [SETS]        SETS: comma list of xquad, covid (default both)
    env  ABLATE_DIR (the indexes, built and kept as tests/ablate.py does), CACHE=path (the
         signals, pickled: a second run only fits), L2 (default 0.001)

For every question, every candidate passage's signals (`Retriever.signals`; proximity and the
answer kind read for every candidate, not only the best RERANK_DEPTH) are labelled by whether the
passage holds an answer text. A linear model, softmax over one question's candidates (ListNet's
top-one form), is fitted on each set alone and on all of them together, and every fit's answer in
the top 1 / top 5 (abstention off, no history) is printed on every set, with covidqa-dev also
5-fold by paper (the other papers' questions and every other set in training). Weights print as
Settings holds them: the four min-max signals sum to 1.
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from assistant.config import Settings  # noqa: E402
from assistant.retrieval import _minmax  # noqa: E402

NAMES = ["w_dense_passage", "w_bm25_passage", "w_dense_sentence", "w_bm25_sentence", "w_cover_passage",
         "definition_bonus", "w_kind_passage", "w_prox_passage"]


def signals(setname: str) -> list[dict]:
    """Per question: the candidates' features (one row per passage, NAMES' order) and labels."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ablate  # indexes and questions, built and kept as the ablation does (loads the model)

    from assistant import evaluation as ev

    a = ablate.assistant(setname, Settings())
    r, ix = a._current().retriever, a._current().index
    qs = ev.squad_questions(ablate.SOURCES[setname])
    out = []
    for q, vec in zip(qs, ablate.EMBEDDER.encode_queries([q["question"] for q in qs])):
        query = r.prepare(q["question"], vec)
        sig = r.signals(query)
        if sig is None:
            continue
        spans = [(int(f), int(n)) for f, n in zip(sig.first, sig.lengths)]
        prox = [float(p.max()) if len(p) else 0.0 for p in r._proximity(query, spans)]
        kind = [r._kind_match(query, f, n, sig.s_fused[o : o + n])[0] if query.kind else 0.0
                for (f, n), o in zip(spans, sig.offsets)]
        X = np.stack([_minmax(sig.dense_p), _minmax(sig.bm25_p), _minmax(sig.dense_s), _minmax(sig.bm25_s),
                      sig.cover, sig.defines, np.asarray(kind), np.asarray(prox)], axis=1).astype(np.float64)
        answers = [t for t in (x["text"].strip() for x in q["answers"]) if t]
        y = np.array([any(t in ix.passages[int(c)].text for t in answers) for c in sig.cand])
        out.append({"X": X, "y": y, "doc": q.get("doc_id", "")})
    return out


def fit(data: list[dict], l2: float) -> np.ndarray:
    """Weights maximising the softmax probability of a question's answering passages."""
    data = [d for d in data if d["y"].any() and not d["y"].all()]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        total, grad = 0.0, np.zeros_like(w)
        for d in data:
            z = d["X"] @ w
            p = np.exp(z - z.max())
            p /= p.sum()
            pos = p * d["y"]
            total -= np.log(pos.sum() + 1e-12)
            grad -= d["X"].T @ (pos / (pos.sum() + 1e-12) - p)
        return total / len(data) + l2 * w @ w, grad / len(data) + 2 * l2 * w

    return minimize(loss, np.zeros(len(NAMES)), jac=True, method="L-BFGS-B").x


def score(data: list[dict], w: np.ndarray) -> tuple[float, float]:
    top1 = top5 = 0
    for d in data:
        y = d["y"][np.argsort(-(d["X"] @ w), kind="stable")]
        top1 += bool(y[:1].any())
        top5 += bool(y[:5].any())
    return round(top1 / len(data), 3), round(top5 / len(data), 3)


def as_settings(w: np.ndarray) -> dict[str, float]:
    return {n: round(float(v / w[:4].sum()), 3) for n, v in zip(NAMES, w)}


def main() -> None:
    sets = (sys.argv[1] if len(sys.argv) > 1 else "xquad,covid").split(",")
    l2 = float(os.environ.get("L2", "0.001"))
    cache = os.environ.get("CACHE")
    if cache and Path(cache).exists():
        data = pickle.loads(Path(cache).read_bytes())
    else:
        data = {s: signals(s) for s in sets}
        if cache:
            Path(cache).write_bytes(pickle.dumps(data))
    s = Settings()
    now = np.array([getattr(s, n) for n in NAMES])
    print("the settings now:", as_settings(now), {t: score(data[t], now) for t in sets})
    fits = {f"fitted on {t}": [t] for t in sets} | {"fitted on all": sets}
    for name, on in fits.items():
        w = fit([d for t in on for d in data[t]], l2)
        print(f"{name}: {as_settings(w)}", {t: score(data[t], w) for t in sets})
    if "covid" in data:
        docs = sorted({d["doc"] for d in data["covid"]})
        fold = {doc: i % 5 for i, doc in enumerate(np.random.default_rng(0).permutation(docs))}
        got = np.zeros(2)
        for f in range(5):
            train = [d for d in data["covid"] if fold[d["doc"]] != f] + [d for t in sets if t != "covid" for d in data[t]]
            test = [d for d in data["covid"] if fold[d["doc"]] == f]
            got += np.array(score(test, fit(train, l2))) * len(test)
        top1, top5 = (round(float(x), 3) for x in got / len(data["covid"]))
        print(f"covid, 5-fold by paper (fitted on all, the held-out papers left out): ({top1}, {top5})")


if __name__ == "__main__":
    main()

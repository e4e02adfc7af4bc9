"""Score settings variants over kept indexes in one process (not a test; README, "Ablation").

    python tests/ablate.py SETS VARIANT...
    SETS     comma list of xquad, covid, mtrag, dev, own; add -bm25 (xquad-bm25, covid-bm25,
             mtrag-bm25) for an index whose vectors are placeholders: no embedding, BM25 only
    VARIANT  name, or name:field=value,... (Settings fields, or module.CONSTANT of assistant/,
             e.g. conversation.CONTEXT_STEPS_ASIDE=0)
    env      ABLATE_DIR (default /tmp/ablate: corpora and indexes are built there once and kept),
             SUB=n (every n-th SQuAD-style question), MODES (MTRAG modes, default alone,conversation,concat)

Each index is built once (the first run embeds; later runs reuse it) and loaded once; every
variant swaps only the Settings and the Retriever, and query vectors are cached across variants.
A -bm25 set must be run with dense weights 0 (w_dense_passage=0,w_dense_sentence=0) and
abstain_threshold=0: its vectors mean nothing.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from assistant import evaluation as ev  # noqa: E402
from assistant.assistant import Assistant  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.embedder import get_embedder  # noqa: E402
from assistant.retrieval import Retriever  # noqa: E402

EVAL = ROOT.parent / "shared" / "eval"
WORK = Path(os.environ.get("ABLATE_DIR", "/tmp/ablate"))
SOURCES = {"xquad": EVAL / "xquad", "covid": EVAL / "covidqa-dev", "mtrag": EVAL / "mtrag-dev"}


class Cached:
    """The real embedder, with query vectors remembered across variants."""

    def __init__(self, e) -> None:
        self.e, self.c = e, {}

    def encode_query(self, t: str) -> np.ndarray:
        if t not in self.c:
            self.c[t] = self.e.encode_query(t)
        return self.c[t]

    def encode_queries(self, ts: list[str]) -> list[np.ndarray]:
        miss = [t for t in ts if t not in self.c]
        for t, v in zip(miss, self.e.encode_queries(miss) if miss else []):
            self.c[t] = v
        return [self.c[t] for t in ts]

    def __getattr__(self, k):
        return getattr(self.e, k)


class Placeholder(Cached):
    """Passage and sentence vectors from a hash of the text: indexing costs no embedding."""

    def encode_passages(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.e.dim), dtype=np.float32)
        out = np.stack([np.random.default_rng(int(hashlib.md5(t.encode()).hexdigest()[:8], 16)).standard_normal(self.e.dim)
                        for t in texts]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


EMBEDDER = Cached(get_embedder())
_OPEN: dict[str, Assistant] = {}
_DEFAULTS: dict[tuple[str, str], object] = {}


def parse(variant: str) -> tuple[str, dict]:
    """'name:k=v,...' -> (name, Settings overrides); module constants are set here (and reset first)."""
    for (mod, attr), val in _DEFAULTS.items():
        setattr(importlib.import_module(mod), attr, val)
    name, _, kv = variant.partition(":")
    fields, base = {}, Settings()
    for item in filter(None, kv.split(",")):
        k, _, x = item.partition("=")
        if "." in k:
            mod, attr = "assistant." + k.rsplit(".", 1)[0], k.rsplit(".", 1)[1]
            m = importlib.import_module(mod)
            cur = getattr(m, attr)
            _DEFAULTS.setdefault((mod, attr), cur)
            setattr(m, attr, x == "1" if isinstance(cur, bool) else type(cur)(x))
        else:
            cur = getattr(base, k)
            fields[k] = x == "1" if isinstance(cur, bool) else type(cur)(x)
    return name, fields


def assistant(setname: str, s: Settings) -> Assistant:
    """The set's Assistant (built and indexed once), switched to settings `s`."""
    if setname not in _OPEN:
        kind = setname.split("-")[0]
        if kind in ("dev", "own"):
            a = Assistant(Settings(corpus_dir=ROOT / "corpus", index_dir=WORK / "seed-index"), embedder=EMBEDDER)
            a.reindex(progress=False)
        else:
            corpus = WORK / f"{kind}-corpus"
            if not corpus.exists():
                ev.write_squad_corpus(SOURCES[kind], corpus)
            placeholder = setname.endswith("-bm25")
            emb = Placeholder(EMBEDDER.e) if placeholder else EMBEDDER
            a = Assistant(Settings(corpus_dir=corpus, index_dir=WORK / f"{setname}-index"), embedder=emb)
            a.reindex(progress=False)
            a._embedder = EMBEDDER  # questions are always encoded by the real model
        _OPEN[setname] = a
    a = _OPEN[setname]
    loaded = a._current()
    a.settings = replace(s, corpus_dir=a.settings.corpus_dir, index_dir=a.settings.index_dir)
    loaded.retriever = Retriever(loaded.index, a.settings)
    return a


_QUESTIONS: dict[str, list] = {}


def run(setname: str, s: Settings) -> dict:
    kind = setname.split("-")[0]
    a = assistant(setname, s)
    if kind in ("xquad", "covid"):
        qs = _QUESTIONS.setdefault(kind, ev.squad_questions(SOURCES[kind])[:: int(os.environ.get("SUB", "1"))])
        r = ev.score_squad(a, qs)
        return dict(top1=r.top1, top5=r.top5, highlight=r.highlight, abstained=r.abstained, median_words=r.median_passage_words)
    if kind == "mtrag":
        qs = _QUESTIONS.setdefault(kind, ev.mtrag_queries(SOURCES[kind]))
        out = {}
        for m in os.environ.get("MODES", "alone,conversation,concat").split(","):
            r = ev.score_mtrag(a, qs, m)
            out[m] = dict(top5=r.top5, followup_top5=r.followup_top5, answerable_abstained=r.answerable_abstained,
                          unanswerable_abstained=r.unanswerable_abstained)
        return out
    files = [EVAL / "dev.jsonl"] if kind == "dev" else [
        ROOT / "tests" / "data" / "seed_questions.jsonl", ROOT / "tests" / "data" / "offtopic.jsonl",
        ROOT / "tests" / "data" / "neartopic.jsonl", ROOT / "tests" / "conversations.jsonl"]
    out = {}
    for f in files:
        sm = ev.evaluate_cases(a, ev.load_cases(f)).summary()
        out[f.stem] = {k: sm[k] for k in ("hit@1", "hit@3", "followup_hit@1", "abstain_recall", "answerable_abstained")}
    return out


def _round(x):
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return round(x, 3) if isinstance(x, float) else x


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    WORK.mkdir(parents=True, exist_ok=True)
    for variant in sys.argv[2:]:
        name, fields = parse(variant)
        s = replace(Settings(), **fields)
        for setname in sys.argv[1].split(","):
            t = time.time()
            print(f"{name:14s} {setname:10s} {json.dumps(_round(run(setname, s)))} ({time.time() - t:.0f}s)", flush=True)


if __name__ == "__main__":
    main()

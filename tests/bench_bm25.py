"""BM25 per question, two ways on one library: the levels a generation holds against the same
levels as segments (index.BM25Level), over the bench's real questions, in one process.

    python tests/bench_bm25.py --workdir DIR/n100000 [--questions 240] [--repeat 3] [--segments OUT]

A generation of format 5 (bm25s's arrays, a score per entry) is converted to segments in OUT
(default: a temporary folder; the conversion is what the first reindex does) and both are
timed question by question, alternately; every result is checked equal. A generation already
in segments is timed alone. Times: `bm25_topk` (passages k=50, sentences k=100, as
`candidate_rows` asks) and `bm25_scores_for` over the candidates' passages and sentences (as
retrieval rescoring asks), ms per question."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from assistant import index as ix  # noqa: E402
from tests.bench_scale import questions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--questions", type=int, default=240)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--segments", default="")
    a = ap.parse_args()
    index = ix.load(Path(a.workdir) / "index")
    gen = index.path
    levels = {"passages": [index.bm25_passages], "sentences": [index.bm25_sentences]}
    names = [type(index.bm25_passages).__name__]
    if isinstance(index.bm25_passages, ix.ScoredLevel):
        out = Path(a.segments or tempfile.mkdtemp(prefix="bm25seg-"))
        for name in ("passages", "sentences"):
            t0 = time.perf_counter()
            folder = out / f"bm25-{name}"
            if not (folder / ix.LEVEL_META).exists():
                p = ix.load_postings(levels[name][0], gen / f"bm25-{name}")
                ix.BM25Level.from_postings(p).save(folder)
            levels[name].append(ix.BM25Level.load(folder))
            print(f"{name}: converted to segments in {time.perf_counter() - t0:.1f} s ({folder})", flush=True)
        names.append("BM25Level")
    n_p, n_s = len(index.passages), int(len(index.sent_passage))
    qs = [ix.tokenize([q["question"]])[0] for q in questions(a.questions)]
    times = {name: {op: [] for op in ("topk_p", "topk_s", "for_p", "for_s")} for name in names}
    for rep in range(a.repeat):
        for qi, toks in enumerate(qs):
            results = []
            order = list(range(len(names))) if (qi + rep) % 2 == 0 else list(reversed(range(len(names))))
            got = {}
            for i in order:
                lp, ls = levels["passages"][i], levels["sentences"][i]
                t = times[names[i]]
                t0 = time.perf_counter()
                rp, sp = ix.bm25_topk(lp, toks, n_p, 50)
                t1 = time.perf_counter()
                rs, ss = ix.bm25_topk(ls, toks, n_s, 100)
                t2 = time.perf_counter()
                cand = np.union1d(rp, np.asarray(index.sent_passage)[rs])
                spans = index.sent_rows[cand]
                sent = np.concatenate([np.arange(x, y) for x, y in spans]) if len(spans) else np.zeros(0, np.int64)
                t3 = time.perf_counter()
                fp = ix.bm25_scores_for(lp, toks, cand)
                t4 = time.perf_counter()
                fs = ix.bm25_scores_for(ls, toks, sent)
                t5 = time.perf_counter()
                if rep:  # the first pass warms the pages
                    t["topk_p"].append(t1 - t0)
                    t["topk_s"].append(t2 - t1)
                    t["for_p"].append(t4 - t3)
                    t["for_s"].append(t5 - t4)
                got[i] = (rp, sp, rs, ss, fp, fs)
            results = [got[i] for i in range(len(names))]
            for other in results[1:]:
                for x, y in zip(results[0], other):
                    assert np.array_equal(x, y), (qi, toks)
    report = {}
    for name in names:
        report[name] = {op: {"p50_ms": round(1000 * float(np.percentile(v, 50)), 3),
                             "p99_ms": round(1000 * float(np.percentile(v, 99)), 3),
                             "mean_ms": round(1000 * float(np.mean(v)), 3)} for op, v in times[name].items()}
    print(json.dumps({"generation": gen.name, "passages": n_p, "sentences": n_s, "questions": len(qs),
                      "same_results": len(names) > 1, **report}, indent=1))


if __name__ == "__main__":
    main()

"""Benchmark: asking a built library in one process (what a serving process pays per question).

    python tests/bench_ask.py --workdir DIR [--questions 240] [--cold] [--count] [--profile OUT]

DIR is a bench_scale.py library folder (corpus/, index/, questions.json). Opens the Assistant,
warms the model up, asks the first question (timed: first question after start), then asks the
questions (each timed, query encode included) and prints one JSON object: open, first question,
ask p50/p99/max (wall clock and the process's CPU time), and the process's memory split (VmRSS, RssAnon: its own; RssFile: mapped index
pages). Runs with whatever `assistant` package is on PYTHONPATH, so two versions of the code can
be compared back to back on hard-linked copies of one library.

--count   also counts, per question, the article records read that were not in the cache
          (DocTable._parsed misses), and the time spent reading records (the outermost call of
          Index.sentence_text, PassageTable[...], DocTable[...] / .record): slows asking a little.
--cold    empties the record and passage caches before each question: every question as cold
          as in a library far larger than the cache.
--profile writes a cProfile of the timed questions to OUT.

    python tests/bench_ask.py --workdir DIR --sentence-reads 3000

only loads the index and reads that many random sentences (Index.sentence_text), first with
empty record caches (each of a different article, mostly) then again: CPU time per sentence.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
            out[line.split(":")[0] + "_mb"] = round(int(line.split()[1]) / 1024, 1)
    return out


def sentence_reads(workdir: Path, n: int) -> None:
    import random

    from assistant import index as ix

    index = ix.load(workdir / "index")
    rows = random.Random(1).sample(range(len(index.sent_passage)), min(n, len(index.sent_passage)))
    out = {"format": index.manifest.get("format"), "sentences": len(rows)}
    for label in ("cold", "warm"):
        if label == "cold":
            index.docs._cache.clear()
            index.passages._made.clear()
        t = time.process_time()
        for r in rows:
            index.sentence_text(r)
        out[f"{label}_us_per_sentence"] = round((time.process_time() - t) / len(rows) * 1e6, 2)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--questions", type=int, default=240)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--count", action="store_true")
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--sentence-reads", type=int, default=0)
    args = ap.parse_args()
    if not (args.workdir / "index").is_dir() or not (args.workdir / "questions.json").is_file():
        print(f"{args.workdir} is not a bench_scale.py library (index/ and questions.json)", file=sys.stderr)
        sys.exit(2)
    from assistant import Assistant, Settings
    from assistant import records

    if args.sentence_reads:
        sentence_reads(args.workdir, args.sentence_reads)
        return

    qs = [q["question"] for q in json.loads((args.workdir / "questions.json").read_text())][: args.questions]
    misses = [0]
    if args.count:
        real = records.DocTable._parsed

        def counting(self, i):
            if i not in self._cache:
                misses[0] += 1
            return real(self, i)

        records.DocTable._parsed = counting
        # time inside the records' entry points (the outermost call only): what reading articles costs
        from assistant import index as ix

        depth, spent = [0], [0.0]

        def timed(fn):
            def inner(*a, **k):
                if depth[0]:
                    return fn(*a, **k)
                depth[0] += 1
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[0] += time.perf_counter() - t0
                    depth[0] -= 1
            return inner

        for cls, name in ((ix.Index, "sentence_text"), (records.PassageTable, "__getitem__"),
                          (records.DocTable, "__getitem__"), (records.DocTable, "record")):
            setattr(cls, name, timed(getattr(cls, name)))
    t = time.perf_counter()
    a = Assistant.open(settings=Settings(corpus_dir=args.workdir / "corpus", index_dir=args.workdir / "index"))
    open_s = time.perf_counter() - t
    a.embedder.encode_query("warm up")
    t = time.perf_counter()
    a.ask(qs[0])
    first_ms = (time.perf_counter() - t) * 1000
    index = a._current().index
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    times, cpu, per_q, got = [], [], [], []
    for q in qs:
        if args.cold:
            index.docs._cache.clear()
            index.passages._made.clear()
        misses[0] = 0
        if args.count:
            spent[0] = 0.0
        if prof:
            prof.enable()
        t, c = time.perf_counter(), time.process_time()
        res = a.ask(q)
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
        if prof:
            prof.disable()
        got.append([(x.source.doc_id, x.source.start, x.source.end) for x in res.answers])
        per_q.append((misses[0], spent[0] * 1000 if args.count else 0.0))
    if prof:
        prof.dump_stats(str(args.profile))
    import numpy as np

    out = {"format": index.manifest.get("format"), "passages": len(index.passages), "articles": len(index.docs),
           "questions": len(qs), "cold": args.cold,
           # the answers given (article, offsets), hashed: two versions that answer alike print the same
           "answers_sha": hashlib.sha256(json.dumps(got).encode()).hexdigest()[:16], "open_s": round(open_s, 3), "first_ms": round(first_ms, 1),
           "ask_p50_ms": round(float(np.percentile(times, 50)), 1), "ask_p99_ms": round(float(np.percentile(times, 99)), 1),
           "ask_max_ms": round(max(times), 1),
           # CPU time of the process per question (its threads included): steadier than the wall
           # clock on a shared machine, where a question also waits for a core
           "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 1), "cpu_p99_ms": round(float(np.percentile(cpu, 99)), 1),
           **_status()}
    if args.count:
        n, ms = np.array([x[0] for x in per_q]), np.array([x[1] for x in per_q])
        out.update(records_read_p50=float(np.percentile(n, 50)), records_read_p99=float(np.percentile(n, 99)),
                   records_read_max=int(n.max()), records_ms_p50=round(float(np.percentile(ms, 50)), 2),
                   records_ms_p99=round(float(np.percentile(ms, 99)), 2), records_ms_max=round(float(ms.max()), 2),
                   records_ms_total=round(float(ms.sum()), 1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

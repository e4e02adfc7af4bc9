"""Same answers, side by side: the FAISS folder and PostgreSQL + pgvector on the same library.

    .venv/bin/python tests/bench_pg.py [--sets xquad covidqa-dev] [--cache DIR] [--database URL]

For each SQuAD-style set in ../shared/eval: the library is built once into a FAISS folder
(cached in DIR, default $TMPDIR/assistant-bench-pg: covidqa-dev takes ~10 minutes to embed),
then moved into Postgres with `reindex --database` (the vectors are reused: nothing is
embedded again). Every question is asked of both backends, and of Postgres with dense
candidates from the HNSW indexes (ASSISTANT_PG_DENSE=hnsw). Printed: how often the top answer
agrees (same passage, or both abstain), each backend's eval figures (answer in top-1/3/5,
MRR), ask p50/p99, build time, and the resident memory of one process that loaded the index.
Without --database a throw-away PostgreSQL is started with pgserver. Timings are printed,
never asserted; they move from run to run on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from assistant import Assistant, pgstore  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.evaluation import _jsonl, write_squad_corpus  # noqa: E402

SHARED = ROOT.parent / "shared" / "eval"


def faiss_library(name: str, cache: Path) -> tuple[Settings, float | None]:
    """The set's corpus and its FAISS index, built once (seconds it took, or None if cached)."""
    src = SHARED / name
    root = cache / name
    s = Settings(corpus_dir=root / "corpus", index_dir=root / "index")
    if (s.index_dir / "CURRENT").exists():
        return s, None
    write_squad_corpus(src, s.corpus_dir)
    t = time.perf_counter()
    Assistant(s).reindex(progress=sys.stderr.isatty())
    return s, time.perf_counter() - t


def top_key(res) -> tuple | None:
    if res.abstained or not res.answers:
        return None
    a = res.answers[0].source
    return (a.doc_id, a.start, a.end)


def rank_of(res, answers: list[str]) -> int | None:
    return next((r for r, a in enumerate(res.answers, 1) if any(t in a.text for t in answers)), None)


def figures(ranks: list[int | None]) -> dict:
    n = len(ranks) or 1
    return {f"top{k}": round(sum(1 for r in ranks if r and r <= k) / n, 3) for k in (1, 3, 5)} | {
        "mrr": round(sum(1 / r for r in ranks if r) / n, 3)}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def rss_after_load(settings: Settings, dense: str = "memory") -> float:
    """MiB resident in a fresh process after it loaded the index and answered one question."""
    code = (
        "import sys, psutil; sys.path.insert(0, %r)\n"
        "from assistant import Assistant\nfrom assistant.config import Settings\nfrom pathlib import Path\n"
        "s = Settings(corpus_dir=Path(%r), index_dir=Path(%r), database_url=%r, database_schema=%r)\n"
        "a = Assistant.open(settings=s); a.ask('What is it?')\n"
        "print(psutil.Process().memory_info().rss / 1048576)\n"
    ) % (str(ROOT), str(settings.corpus_dir), str(settings.index_dir), settings.database_url, settings.database_schema)
    env = {**os.environ, "ASSISTANT_PG_DENSE": dense}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else float("nan")


def run_set(name: str, cache: Path, url: str, scratch: bool = False) -> dict:
    fs, faiss_build = faiss_library(name, cache)
    ps = replace(fs, database_url=url, database_schema=f"bench_{name.replace('-', '_')}")
    db = pgstore.database(ps)
    pgstore.drop_schema(db)
    t = time.perf_counter()
    report = Assistant(ps).reindex()
    pg_import = time.perf_counter() - t
    assert report.embedded_passages == 0, report
    scratch_s = faiss_scratch_s = None
    if scratch:  # the same library built from nothing into both, one after the other (embedding it twice)
        with tempfile.TemporaryDirectory(prefix="bench-pg-faiss-") as tmp:
            t = time.perf_counter()
            Assistant(replace(fs, index_dir=Path(tmp) / "index")).reindex()
            faiss_scratch_s = round(time.perf_counter() - t, 2)
        ss = replace(ps, index_dir=cache / name / "no-index", database_schema=ps.database_schema + "_scratch")
        pgstore.drop_schema(pgstore.database(ss))
        t = time.perf_counter()
        Assistant(ss).reindex()
        scratch_s = round(time.perf_counter() - t, 2)
        pgstore.drop_schema(pgstore.database(ss))
        pgstore.close_database(ss)
    # the no-threshold settings as `eval --squad --no-abstain`, and the default (abstention on)
    questions = _jsonl(SHARED / name / "questions.jsonl", ("question",))
    out: dict = {"set": name, "questions": len(questions), "faiss_build_s": faiss_build, "pg_import_s": round(pg_import, 2),
                 "faiss_build_from_scratch_s": faiss_scratch_s, "pg_build_from_scratch_s": scratch_s}
    backends = {"faiss": Assistant(fs), "postgres": Assistant(ps)}
    os.environ["ASSISTANT_PG_DENSE"] = "hnsw"
    backends["postgres+hnsw"] = Assistant(ps)
    os.environ.pop("ASSISTANT_PG_DENSE")
    tops: dict[str, list] = {k: [] for k in backends}
    ranks: dict[str, list] = {k: [] for k in backends}
    times: dict[str, list] = {k: [] for k in backends}
    for b in backends.values():
        b.ask("warm up")
    for q in questions:
        answers = [x["text"] for x in q.get("answers", [])]
        for k, b in backends.items():
            t = time.perf_counter()
            res = b.ask(q["question"][:1000], top_k=5)
            times[k].append(time.perf_counter() - t)
            tops[k].append(top_key(res))
            ranks[k].append(rank_of(res, answers))
    n = len(questions)
    for k in ("postgres", "postgres+hnsw"):
        agree = sum(1 for a, b in zip(tops["faiss"], tops[k]) if a == b)
        out[f"agree_{k}"] = round(agree / n, 4)
        out[f"differ_{k}"] = [questions[i]["question"] for i, (a, b) in enumerate(zip(tops["faiss"], tops[k])) if a != b][:10]
    for k in backends:
        out[f"figures_{k}"] = figures(ranks[k]) | {"abstained": round(sum(t is None for t in tops[k]) / n, 3)}
        out[f"ask_ms_{k}"] = {"p50": round(pct(times[k], 50), 1), "p99": round(pct(times[k], 99), 1)}
    out["rss_mib"] = {"faiss": round(rss_after_load(fs), 0), "postgres": round(rss_after_load(ps), 0),
                      "postgres+hnsw": round(rss_after_load(ps, "hnsw"), 0)}
    pgstore.close_database(ps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["xquad", "covidqa-dev"])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "assistant-bench-pg")
    ap.add_argument("--database", default=None, help="a PostgreSQL URL (default: start one with pgserver)")
    ap.add_argument("--scratch", action="store_true", help="also time a Postgres build from nothing (embeds again)")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.database:
        results = [run_set(n, args.cache, args.database, args.scratch) for n in args.sets]
    else:
        from tests.fixtures_pg import start_postgres

        with start_postgres(prefix="pgbench-") as srv:
            results = [run_set(n, args.cache, srv.url, args.scratch) for n in args.sets]
    for r in results:
        print(json.dumps(r, indent=1))
    print("\nset            questions  agree pg  agree pg+hnsw  top1 faiss/pg/hnsw  ask p50 ms faiss/pg/hnsw  p99")
    for r in results:
        f = [r[f"figures_{k}"]["top1"] for k in ("faiss", "postgres", "postgres+hnsw")]
        p50 = [r[f"ask_ms_{k}"]["p50"] for k in ("faiss", "postgres", "postgres+hnsw")]
        p99 = [r[f"ask_ms_{k}"]["p99"] for k in ("faiss", "postgres", "postgres+hnsw")]
        print(f"{r['set']:<14} {r['questions']:>9}  {r['agree_postgres']:.4f}    {r['agree_postgres+hnsw']:.4f}"
              f"         {f[0]:.3f}/{f[1]:.3f}/{f[2]:.3f}     {p50[0]}/{p50[1]}/{p50[2]}   {p99[0]}/{p99[1]}/{p99[2]}")


if __name__ == "__main__":
    main()

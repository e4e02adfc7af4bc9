"""`make bench`: warm answer time of Assistant.ask on the seed corpus, beside the floor.

The floor is one query encode by the same model in the same run (what any dense search must
pay); everything else ask() does (BM25, FAISS, sentence scoring, de-duplication, abstention,
conversation) should add little. Timings are printed, never asserted.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant import Assistant  # noqa: E402

SHARED = ROOT.parent / "shared" / "eval"


def question_pool() -> list[tuple[str, list[str]]]:
    """(question, history) pairs: the dev set and our own sets (follow-ups with their history),
    topped up with XQuAD questions (off-topic here, so they exercise abstention)."""
    pool: list[tuple[str, list[str]]] = []
    files = [SHARED / "dev.jsonl", *sorted((ROOT / "tests" / "data").glob("*.jsonl")), ROOT / "tests" / "conversations.jsonl"]
    for f in files:
        if not f.exists():
            continue
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                history: list[str] = []
                for t in json.loads(line)["turns"]:
                    pool.append((t["q"], list(history)))
                    history.append(t["q"])
    xq = SHARED / "xquad" / "questions.jsonl"
    if xq.exists():
        for line in xq.read_text(encoding="utf-8").splitlines()[: max(0, 240 - len(pool))]:
            pool.append((json.loads(line)["question"], []))
    return pool


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    a = Assistant.open()
    pool = question_pool()
    for q, h in pool[:10]:  # warm-up: first calls allocate
        a.ask(q, h)
    encode, ask = [], []
    for q, h in pool:
        t = time.perf_counter()
        a.embedder.encode_query(q)
        encode.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        a.ask(q, h)
        ask.append((time.perf_counter() - t) * 1000)
    enc50, ask50 = statistics.median(encode), statistics.median(ask)
    print(f"Assistant.ask, warm, seed corpus, {len(pool)} questions")
    print(f"  floor: one query encode   p50 {enc50:6.1f} ms   p95 {pct(encode, 95):6.1f} ms")
    print(f"  ask (whole answer)        p50 {ask50:6.1f} ms   p95 {pct(ask, 95):6.1f} ms")
    print(f"  ask p50 / encode p50 = {ask50 / enc50:.2f}x")


if __name__ == "__main__":
    main()

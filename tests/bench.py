"""`make bench`: warm answer time of Assistant.ask on the seed corpus with each encoder, beside
the floor, and the build throughput of each.

The floor is one query encode by the torch model in the same run (what any dense search paid
before the ONNX encoder); everything else ask() does (BM25, FAISS, sentence scoring,
de-duplication, abstention, conversation) should add little. Both encoders are timed on the
same questions, taking turns by blocks of 30, so machine load hits both alike and neither runs
beside the other's spinning thread pool. Timings are printed, never asserted.
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
from assistant.embedder import get_embedder  # noqa: E402

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


def build(embedder, settings_dir: Path) -> tuple[float, float, int]:
    """A full build of the seed corpus into a fresh folder with `embedder`: (seconds, seconds
    embedding, texts embedded)."""
    import tempfile

    from assistant import Settings
    from assistant.reindex import reindex

    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        timings: dict = {}
        t = time.perf_counter()
        reindex(Settings(corpus_dir=settings_dir, index_dir=Path(tmp)), embedder, timings=timings)
        total = time.perf_counter() - t
        m = json.loads(next(Path(tmp).glob("gen-*/manifest.json")).read_text())
    return total, timings["embed"], m["passages"] + m["sentences"]


BLOCK = 30


def main() -> None:
    onnx, torch_ = get_embedder("onnx"), get_embedder("torch")
    a = {"onnx": Assistant.open(embedder=onnx), "torch": Assistant.open(embedder=torch_)}
    pool = question_pool()
    for q, h in pool[:10]:  # warm-up: first calls allocate
        for x in a.values():
            x.ask(q, h)
    encode = {"torch": [], "onnx": []}
    ask = {"torch": [], "onnx": []}
    # blocks of BLOCK questions, the encoders taking turns: a shared machine's load hits both
    # alike, yet each runs as it would alone (one encoder's thread pool, still spinning right after
    # its run, slowed the other's next encode by half when they alternated question by question)
    for start in range(0, len(pool), BLOCK):
        block = pool[start : start + BLOCK]
        for name, emb in (("torch", torch_), ("onnx", onnx)):
            emb.encode_query(block[0][0])  # the other encoder's pool settles
            for q, h in block:
                t = time.perf_counter()
                emb.encode_query(q)
                encode[name].append((time.perf_counter() - t) * 1000)
            for q, h in block:
                t = time.perf_counter()
                a[name].ask(q, h)
                ask[name].append((time.perf_counter() - t) * 1000)
    floor = statistics.median(encode["torch"])
    print(f"Assistant.ask, warm, seed corpus, {len(pool)} questions (torch: {torch_threads()} threads; "
          f"onnx: {onnx.model.threads} thread(s))")
    for name in ("torch", "onnx"):
        print(f"  one query encode, {name:<5}    p50 {statistics.median(encode[name]):6.1f} ms   p95 {pct(encode[name], 95):6.1f} ms")
    for name in ("torch", "onnx"):
        print(f"  ask (whole answer), {name:<5}  p50 {statistics.median(ask[name]):6.1f} ms   p95 {pct(ask[name], 95):6.1f} ms"
              f"   = {statistics.median(ask[name]) / floor:.2f}x one torch encode")
    print(f"  onnx encode p50 / torch encode p50 = {statistics.median(encode['onnx']) / floor:.2f}x "
          f"(target for ask with onnx: <= 0.6x one torch encode)")
    corpus = a["onnx"].settings.corpus_dir
    print(f"Full build of the seed corpus ({corpus}/) into a new folder")
    for name, emb in (("torch", torch_), ("onnx", onnx)):
        total, embed, n = build(emb, corpus)
        print(f"  {name:<5}  {total:5.2f} s in all, embedding {n} texts in {embed:5.2f} s = {n / embed:6.1f} texts/s")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()

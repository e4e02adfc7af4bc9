"""Benchmark: approximate vector search against exact, on a bench library's own vectors (issue 11).

    python tests/bench_ann.py --index /tmp/bs4/n100000/index [--questions 240] [--json]
        [--level passages|sentences|both] [--configs ivf,hnsw32,ivfhnsw] [--scale-passages N]

For each level (passages: recall@50, sentences: recall@100, as retrieval asks them) and each
store configuration: the build time (train + add, every core), the bytes the store writes (what
a serving process maps), and per efSearch / nprobe value the candidate recall (the share of the
exact top-k that the store returns, mean and worst question) and the ms per search (one query at
a time, one thread, as a server searches).

Vectors: the library's own (`ix.load`), float32 passages and float16 sentences as stored.
Questions: the bench's real XQuAD questions (`bench_scale.questions`), encoded by the real model.
With --scale-passages N the levels are grown to N passages (and the library's sentences per
passage) by appending stand-ins made as bench_scale makes them: real MiniLM vectors of the
source sentences (the workdir's base-*.npy cache; passages: a sum of 3-5 of them), perturbed
(cosine ~0.95) and renormalised. They are generated per block, never held whole.

Timings are noisy on a shared 2-core machine: compare the rows of one run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

BLOCK = 65_536


class Level:
    """One level's vectors as blocks: the library's own rows, then generated stand-ins."""

    def __init__(self, own, dtype, total: int, base: np.ndarray | None, per_text: tuple[int, int], seed: int):
        self.own, self.dtype, self.total = own, dtype, max(total, len(own))
        self.base, self.per_text, self.seed = base, per_text, seed
        noise = np.random.default_rng(17).standard_normal((1 << 16, own.shape[1])).astype(np.float32)
        self.noise = noise / np.linalg.norm(noise, axis=1, keepdims=True)

    def __len__(self) -> int:
        return self.total

    def block(self, start: int, stop: int) -> np.ndarray:
        n_own = len(self.own)
        parts = []
        if start < n_own:
            parts.append(np.asarray(self.own[start : min(stop, n_own)], dtype=np.float32))
        if stop > n_own:
            a = max(start, n_own)
            rng = np.random.default_rng((self.seed, a))
            lo, hi = self.per_text
            m = stop - a
            counts = rng.integers(lo, hi + 1, size=m)
            picks = rng.integers(0, len(self.base), size=int(counts.sum()))
            v = np.add.reduceat(self.base[picks], np.concatenate([[0], np.cumsum(counts)[:-1]]), axis=0)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            v += 0.33 * self.noise[np.arange(a, stop) % len(self.noise)]
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            parts.append(v.astype(self.dtype).astype(np.float32))  # as the store keeps them
        return np.concatenate(parts)

    def blocks(self):
        for i in range(0, self.total, BLOCK):
            yield i, self.block(i, min(i + BLOCK, self.total))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        pick = np.sort(np.random.default_rng(seed).choice(self.total, size=min(n, self.total), replace=False))
        return np.concatenate([self.block(i, min(i + BLOCK, self.total))[pick[(pick >= i) & (pick < i + BLOCK)] - i]
                               for i in range(0, self.total, BLOCK)])


def exact(level: Level, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids per question (all questions at once, block by block)."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for i, b in level.blocks():
        s = q @ b.T
        ids = np.broadcast_to(np.arange(i, i + len(b)), s.shape)
        s, ids = np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1)
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(ids, top, 1)
    return best_i


def build(config: str, level: Level, fp16: bool):
    import faiss

    from assistant import index as ix

    dim = level.own.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    n = len(level)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    if config.startswith("pq"):  # product-quantised codes (4-bit fast scan), every one scanned
        index = faiss.IndexPQFastScan(dim, int(config[2:]), 4, ip)
        faiss.omp_set_num_threads(1)  # as FaissStore.train does (small k-means: threads only wait)
        index.train(level.sample(ix.PQ_TRAIN))
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        t_train = time.perf_counter() - t0
    elif config.startswith("hnsw"):
        m, efc = (32, 128) if config == "hnsw32" else (16, 64)
        index = (faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, m, ip) if fp16 else faiss.IndexHNSWFlat(dim, m, ip))
        index.hnsw.efConstruction = efc
        if not index.is_trained:
            index.train(np.zeros((1, dim), np.float32))
        t_train = 0.0
    else:
        nlist = ix.ivf_nlist(n)
        if config.startswith("ivf") and config[3:].split("hnsw")[0].isdigit():
            nlist = int(config[3:].split("hnsw")[0])
        if config.endswith("hnsw"):  # HNSW coarse quantizer: cheaper assignment at large nlist
            quantizer = faiss.IndexHNSWFlat(dim, 32, ip)
            quantizer.hnsw.efSearch = 128
        else:
            quantizer = faiss.IndexFlatIP(dim)
        index = (faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, ip) if fp16
                 else faiss.IndexIVFFlat(quantizer, dim, nlist, ip))
        if fp16:
            index.by_residual = False
        index.own_fields = True
        quantizer.this.disown()
        index.set_direct_map_type(faiss.DirectMap.Array)
        sample = level.sample(nlist * ix.IVF_TRAIN_PER_CELL)
        if config.endswith("hnsw"):
            km = faiss.Kmeans(dim, nlist, niter=10, spherical=False, verbose=False)
            km.cp.max_points_per_centroid = ix.IVF_TRAIN_PER_CELL
            km.train(sample)
            quantizer.add(km.centroids)
            index.is_trained = True
        else:
            index.train(sample)
        t_train = time.perf_counter() - t0
    for _, b in level.blocks():
        index.add(b)
    t_all = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_ANN_TMP")) as d:
        faiss.write_index(index, f"{d}/x.faiss")
        size = os.path.getsize(f"{d}/x.faiss")
    return index, {"build_s": round(t_all, 1), "train_s": round(t_train, 1), "file_mb": round(size / 1e6, 1),
                   "vectors_per_s": round(n / t_all)}


def sweep(index, config: str, q: np.ndarray, ref: np.ndarray, k: int, nprobe: list[int], full=None,
          rescore: tuple[int, ...] = (100, 200, 400, 800, 1600, 3200)) -> list[dict]:
    """Recall and time per search for each efSearch / nprobe (pq: candidates rescored exactly)."""
    pq = config.startswith("pq")
    values = [128, 192, 256, 384, 512, 768] if config.startswith("hnsw") else list(rescore) if pq else nprobe
    rows = []
    for v in values:
        if config.startswith("hnsw"):
            index.hnsw.efSearch = max(v, k)
        elif not pq:
            index.nprobe = v
        index.search(q[:5], k)  # warm
        rec, times = [], []
        for i in range(len(q)):
            t = time.perf_counter()
            if pq:
                _, cand = index.search(q[i : i + 1], v)
                cand = cand[0][cand[0] >= 0]
                exact_s = np.asarray(full[cand], dtype=np.float32) @ q[i]
                ids = cand[np.argsort(-exact_s)[:k]][None]
            else:
                _, ids = index.search(q[i : i + 1], k)
            times.append(time.perf_counter() - t)
            rec.append(len(np.intersect1d(ids[0], ref[i])) / k)
        rows.append({("efSearch" if config.startswith("hnsw") else "rescored" if pq else "nprobe"): v, "recall": round(float(np.mean(rec)), 4),
                     "worst": round(float(np.min(rec)), 2), "ms_p50": round(1000 * float(np.median(times)), 2),
                     "ms_mean": round(1000 * float(np.mean(times)), 2)})
        print("   ", rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True, help="a library's index folder (with CURRENT)")
    ap.add_argument("--questions", type=int, default=240)
    ap.add_argument("--level", choices=["passages", "sentences", "both"], default="both")
    ap.add_argument("--configs", default="flat,ivf,hnsw32", help="flat, ivf, ivf<nlist>, ivfhnsw, hnsw16, hnsw32")
    ap.add_argument("--scale-passages", type=int, default=0, help="grow the levels to this many passages")
    ap.add_argument("--subset", type=int, default=0,
                    help="shrink the levels to this many passages (rows drawn at random, sentences in proportion)")
    ap.add_argument("--nprobe", default="8,16,24,32,48,64,96,128", help="IVF cells scanned per search, swept")
    ap.add_argument("--rescore", default="100,200,400,800,1600,3200", help="PQ candidates rescored exactly, swept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import faiss

    from assistant import index as ix
    from assistant.embedder import get_embedder
    from tests import bench_scale as bs

    lib = ix.load(args.index)
    qs = bs.questions(args.questions)
    q = np.asarray(get_embedder().encode_queries([x["question"] for x in qs]), dtype=np.float32)
    n_p, n_s = len(lib.passages), len(lib.sent_passage)
    base = None
    if args.scale_passages:
        cache = sorted(args.index.parent.parent.glob("base-*.npy")) + sorted(Path("/tmp").glob("base-*.npy"))
        base = np.load(cache[0])
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
    out = {"questions": len(q), "library_passages": n_p, "library_sentences": n_s, "levels": {}}
    levels = {"passages": (lib.passage_vectors, np.float32, 50, (3, 5)),
              "sentences": (lib.sent_vectors, np.float16, 100, (1, 1))}
    for name, (own, dtype, k, per_text) in levels.items():
        if args.level not in (name, "both"):
            continue
        total = args.scale_passages * (1 if name == "passages" else n_s / n_p) if args.scale_passages else 0
        if args.subset:
            m = int(args.subset * (1 if name == "passages" else n_s / n_p))
            own = np.asarray(own[np.sort(np.random.default_rng(1).choice(len(own), size=min(m, len(own)), replace=False))])
        level = Level(own, dtype, int(total), base, per_text, seed=3 if name == "passages" else 4)
        print(f"{name}: {len(level):,} vectors, k={k}", flush=True)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        t = time.perf_counter()
        ref = exact(level, q, k)
        exact_s = time.perf_counter() - t
        res = {"vectors": len(level), "k": k, "exact_all_questions_s": round(exact_s, 1), "configs": {}}
        for config in args.configs.split(","):
            if config == "flat":  # exact: what a flat store costs per search
                faiss.omp_set_num_threads(1)
                store = ix.FaissStore.create(own.shape[1], "flat", "float16" if dtype == np.float16 else "float32")
                for _, b in level.blocks():
                    store.index.add(b)
                times = []
                for i in range(len(q)):
                    t = time.perf_counter()
                    store.index.search(q[i : i + 1], k)
                    times.append(time.perf_counter() - t)
                res["configs"]["flat"] = {"ms_p50": round(1000 * float(np.median(times)), 2),
                                          "ms_mean": round(1000 * float(np.mean(times)), 2)}
                print("  flat", res["configs"]["flat"], flush=True)
                del store
                continue
            index, info = build(config, level, dtype == np.float16)
            print(f"  {config}: {info}", flush=True)
            full = np.concatenate([b for _, b in level.blocks()]).astype(dtype) if config.startswith("pq") else None
            info["sweep"] = sweep(index, config, q, ref, k, [int(x) for x in args.nprobe.split(",")], full,
                                  tuple(int(x) for x in args.rescore.split(",")))
            del full
            res["configs"][config] = info
            del index
        out["levels"][name] = res
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()

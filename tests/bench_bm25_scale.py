"""BM25 at a million passages' size without the million library: the sentence level of a
generation replicated 10x (68M entries, 4.0M rows from the 100k bench library), then a
one-article add and removal (keep / extend / rescore or merge check / write, fsynced) and the
bench questions' `bm25_topk` and `bm25_scores_for` on it (new code: also with 500 rows and 5%
of the rows removed, plus a delta).

    PYTHONPATH=<code tree> python tests/bench_bm25_scale.py GEN OUTDIR old|new   (QONLY=1: questions only)

`old`: a tree before segments on a format-5 generation; `new`: this tree."""
import os, sys, time, json, shutil, resource
from pathlib import Path
import numpy as np
sys.path.insert(0, os.environ.get("PYTHONPATH", "").split(":")[0] or str(Path(__file__).resolve().parent.parent))
from assistant import index as ix  # noqa: E402

src, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
R = 10
t0 = time.perf_counter()
if mode == "old":
    p = ix.load_postings(ix._load_bm25(src / "bm25-sentences"), src / "bm25-sentences")
    tf = np.asarray(p.tf)
else:
    lv = ix.load_level_postings(src)[1]
    p = lv.postings_all()
    tf = np.asarray(p.tf)
n, v = p.n_rows, len(p.vocab)
ptr = np.asarray(p.indptr, dtype=np.int64)
counts = np.diff(ptr)
idx = np.asarray(p.indices, dtype=np.int64)
tok = np.repeat(np.arange(v), counts)
# entries of copy c: rows + c*n; token-major: sort by (token, copy)
big_idx = np.empty(len(idx) * R, dtype=np.int32)
big_tf = np.empty(len(idx) * R, dtype=tf.dtype)
new_ptr = ptr * R
# place copies: for token t, copy c occupies new_ptr[t] + c*counts[t] + k
pos_in_tok = np.arange(len(idx)) - ptr[tok]
for c in range(R):
    dst = new_ptr[tok] + c * counts[tok] + pos_in_tok
    big_idx[dst] = idx + c * n
    big_tf[dst] = tf
del tok, pos_in_tok, dst
big = ix.Postings(list(p.vocab), new_ptr, big_idx, big_tf, np.tile(np.asarray(p.doclen, dtype=np.int32), R))
print("built", len(big_idx), "entries", big.n_rows, "rows in", round(time.perf_counter() - t0, 1), "s", flush=True)
base = out / f"scale10-{mode}"
shutil.rmtree(base, ignore_errors=True); base.mkdir(parents=True)
if mode == "old":
    r = big.retriever(); r.save(base / "lvl", show_progress=False); r.postings.save(base / "lvl")
    del r
    loaded = lambda: ix.load_postings(ix._load_bm25(base / "lvl"), base / "lvl")
else:
    ix.BM25Level.from_postings(big).save(base / "lvl")
    loaded = lambda: ix.BM25Level.load(base / "lvl")
del big, big_idx, big_tf
rng = np.random.default_rng(1)
N = n * R
gone = np.arange(N // 2, N // 2 + 32)
keep_rows = np.setdiff1d(np.arange(N), gone)
add = [list(rng.choice(p.vocab, size=12)) for _ in range(32)]

def fsync_tree(d):
    for f in Path(d).iterdir():
        fd = os.open(f, os.O_RDONLY); os.fsync(fd); os.close(fd)

res = {}
from tests.bench_scale import questions
qs = [ix.tokenize([q["question"]])[0] for q in questions(240)]
lvq = ix._load_bm25(base / "lvl")
for rep in range(2):
    ts, fs = [], []
    for toks in qs:
        t0 = time.perf_counter()
        rows, _ = ix.bm25_topk(lvq, toks, N, 100)
        t1 = time.perf_counter()
        ix.bm25_scores_for(lvq, toks, np.sort(np.concatenate([rows, rng.choice(N, 1300)])))
        ts.append(t1 - t0); fs.append(time.perf_counter() - t1)
res["bm25_topk ms p50/p99/mean"] = [round(1000 * float(np.percentile(ts, 50)), 3), round(1000 * float(np.percentile(ts, 99)), 3), round(1000 * float(np.mean(ts)), 3)]
res["bm25_scores_for 1400 rows ms p50/p99/mean"] = [round(1000 * float(np.percentile(fs, 50)), 3), round(1000 * float(np.percentile(fs, 99)), 3), round(1000 * float(np.mean(fs)), 3)]
if mode == "new":
    for label, drop in (("500 rows", 500), ("5% of rows", N // 20)):
        lvt = lvq.keep(np.sort(rng.choice(N, N - drop, replace=False))).extend(add)
        for rep in range(2):
            ts = []
            for toks in qs:
                t0 = time.perf_counter(); ix.bm25_topk(lvt, toks, lvt.n_rows, 100); ts.append(time.perf_counter() - t0)
        res[f"bm25_topk with {label} removed + delta, ms p50/p99/mean"] = [round(1000 * float(np.percentile(ts, 50)), 3), round(1000 * float(np.percentile(ts, 99)), 3), round(1000 * float(np.mean(ts)), 3)]
        del lvt
del lvq
for name, rm, ad in (() if os.environ.get("QONLY") else (("add one", False, True), ("remove one", True, False))):
    t = {}
    lv = loaded()
    t0 = time.perf_counter()
    if rm:
        lv = lv.keep(keep_rows)
    t["keep"] = time.perf_counter() - t0; t0 = time.perf_counter()
    if ad:
        lv = lv.extend(add)
    t["extend"] = time.perf_counter() - t0; t0 = time.perf_counter()
    lv = lv.retriever() if mode == "old" else lv.settled()
    t["bm25"] = time.perf_counter() - t0; t0 = time.perf_counter()
    d = base / "next"
    shutil.rmtree(d, ignore_errors=True)
    if mode == "old":
        lv.save(d, show_progress=False); lv.postings.save(d)
    else:
        lv.save(d)
    fsync_tree(d)
    t["write"] = time.perf_counter() - t0
    t["written MB"] = sum(f.stat().st_size for f in d.iterdir() if f.stat().st_nlink == 1) / 1e6
    res[name] = {k: round(x, 3) for k, x in t.items()}
    del lv
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
res["on_disk_mb"] = sum(f.stat().st_size for f in (base / "lvl").iterdir()) / 1e6
print(json.dumps({"mode": mode, "entries": int(len(idx) * R), "rows": N, **res}, indent=1))
shutil.rmtree(base)

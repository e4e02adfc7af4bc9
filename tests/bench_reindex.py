"""Benchmark: what adding one article costs with 5 articles indexed, and with 1,000.

    .venv/bin/python tests/bench_reindex.py [--repeat 3] [--cache DIR] [--rebuild]

The 1,000 synthetic articles (distinct, 5-8 sentences each, about invented treatments) are
built into an index once (a few minutes: embedding is ~120 sentences/s on 2 cores) and cached
in DIR (default: $TMPDIR/assistant-bench-reindex); later runs copy the cache and take seconds.
Each size is timed for: a no-op reindex right after copying (every file is re-hashed: the
stat cache does not trust copied files), a no-op reindex, adding one article (median of
--repeat runs, with where the time goes), changing one, and removing one. It also times what a
serving worker pays to load the new generation and build its subjects (`subjects.py`).

Prints the timings; asserts nothing (tests do not assert timings).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GENERATOR_VERSION = 1
N_LARGE = 1000
N_SMALL = 5

_ONSETS = ["b", "br", "c", "cl", "d", "dr", "f", "fl", "g", "gr", "k", "l", "m", "n", "p", "pl", "r", "s",
           "st", "t", "tr", "v", "z", "qu", "sh", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
_CODAS = ["n", "r", "l", "x", "s", "th", "m", "nd", "rk", "v"]
_KINDS = ["infusion", "peel", "light facial", "serum therapy", "cryo wrap", "clay mask", "micro-current session",
          "enzyme scrub", "steam cleanse", "collagen patch", "thermal massage", "oxygen spray"]
_AREAS = ["forehead", "cheeks", "jawline", "neck", "scalp", "hands", "under-eye area", "upper arms", "back",
          "décolletage", "knees", "temples"]
_CONCERNS = ["fine lines", "dull skin", "enlarged pores", "uneven tone", "dryness", "redness", "thinning hair",
             "acne marks", "loss of firmness", "dark circles", "rough texture", "sun spots"]
_INGREDIENTS = ["sea-buckthorn oil", "rice ferment", "copper peptides", "birch sap", "green clay", "oat extract",
                "willow bark", "snail mucin", "cloudberry seed oil", "volcanic ash", "niacinamide", "honey wax"]
_EFFECTS = ["a mild tingling", "a brief warmth", "slight pinkness", "a cooling sensation", "light flaking",
            "temporary tightness", "a faint herbal smell", "minor puffiness"]
_ORIGINS = ["a spa in Tallinn", "a clinic in Porto", "a dermatologist in Osaka", "a salon in Bergen",
            "a wellness centre in Ljubljana", "a laboratory in Ghent", "a herbalist in Cusco", "a resort in Bali"]


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        n = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.randint(2, 3))) + rng.choice(_CODAS)
        if n not in used:
            used.add(n)
            return n.capitalize()


def synthetic_articles(n: int, seed: int = 1234, start: int = 0) -> list[tuple[str, str]]:
    """`n` distinct short articles (file name, text) about invented treatments; deterministic."""
    rng = random.Random(seed)
    used: set[str] = set()
    out = []
    for i in range(start + n):
        name = _name(rng, used)
        kind = rng.choice(_KINDS)
        area, concern, ingredient = rng.choice(_AREAS), rng.choice(_CONCERNS), rng.choice(_INGREDIENTS)
        minutes, weeks, sessions = rng.randint(10, 90), rng.randint(1, 8), rng.randint(2, 12)
        title = f"The {name} {kind.title()}: What to Expect"
        sentences = [
            f"The {name} {kind} is a treatment for {concern} on the {area}.",
            f"It was first offered by {rng.choice(_ORIGINS)} in {rng.randint(1990, 2024)}.",
            f"A {name} session lasts about {minutes} minutes and uses {ingredient}.",
            f"Most people book {sessions} sessions, spaced {weeks} week{'s' if weeks > 1 else ''} apart.",
            f"During the {name} {kind} clients usually feel {rng.choice(_EFFECTS)}, which fades within "
            f"{rng.randint(1, 48)} hours.",
            f"A single {name} treatment costs between {rng.randint(40, 200)} and {rng.randint(210, 600)} euros.",
            f"Results of the {name} {kind} are said to last {rng.randint(2, 18)} months.",
            f"People with {rng.choice(['sensitive skin', 'rosacea', 'eczema', 'a sunburn', 'open wounds'])} "
            f"should avoid the {name} {kind} or ask a doctor first.",
        ]
        k = rng.randint(5, 8)
        body = sentences[:3] + rng.sample(sentences[3:], k - 3)
        if i >= start:
            out.append((f"{name.lower()}-{kind.replace(' ', '-')}.txt", title + "\n" + " ".join(body) + "\n"))
    return out


def write_articles(corpus: Path, articles: list[tuple[str, str]], age_seconds: float = 86400.0) -> None:
    """Write the files with an mtime in the past (as a corpus that has been there a while)."""
    corpus.mkdir(parents=True, exist_ok=True)
    past = time.time() - age_seconds
    for name, text in articles:
        p = corpus / name
        p.write_text(text, encoding="utf-8")
        os.utime(p, (past, past))


def _settings(root: Path):
    from assistant import Settings

    return Settings(corpus_dir=root / "corpus", index_dir=root / "index")


def _cache_key() -> str:
    from assistant import index as ix
    from assistant.config import MODEL_NAME
    from assistant.reindex import fingerprints

    return json.dumps([GENERATOR_VERSION, N_LARGE, ix.FORMAT_VERSION, MODEL_NAME, fingerprints()["content"]])


def large_cache(cache: Path, embedder, rebuild: bool = False) -> Path:
    """The 1,000-article corpus and its index, built once and cached."""
    from assistant.reindex import reindex

    key = _cache_key()
    stamp = cache / "key.json"
    if not rebuild and stamp.exists() and stamp.read_text() == key and (cache / "index" / "CURRENT").exists():
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    write_articles(cache / "corpus", synthetic_articles(N_LARGE))
    print(f"building the {N_LARGE}-article index once (cached in {cache}/) ...", flush=True)
    t = time.perf_counter()
    r = reindex(_settings(cache), embedder, progress=sys.stderr.isatty())
    print(f"  built {r.articles} articles, {r.passages} passages in {time.perf_counter() - t:.0f}s", flush=True)
    stamp.write_text(key)
    return cache


def _fmt(t: dict) -> str:
    keys = ["load_previous", "scan", "embed", "tokenize", "bm25", "write", "prune"]
    return ", ".join(f"{k} {t.get(k, 0) * 1000:.0f}" for k in keys if k in t) + f" ms; hashed {t.get('hashed', 0)} files"


def bench_size(root: Path, embedder, extra: list[tuple[str, str]], repeat: int) -> dict:
    from assistant import index as ix
    from assistant import subjects
    from assistant.reindex import reindex

    s = _settings(root)
    out: dict = {}

    def run() -> tuple[float, dict, object]:
        t: dict = {}
        t0 = time.perf_counter()
        r = reindex(s, embedder, timings=t)
        return time.perf_counter() - t0, t, r

    out["noop_after_copy"] = run()
    out["noop"] = run()
    adds = []
    for name, text in extra[:repeat]:
        write_articles(s.corpus_dir, [(name, text)], age_seconds=10)
        sec, t, r = run()
        assert r.added == [name[:-4]], r
        adds.append((sec, t, r))
    adds.sort(key=lambda x: x[0])
    out["add"] = adds[len(adds) // 2]
    out["add_all"] = [a[0] for a in adds]
    victim = sorted(s.corpus_dir.iterdir())[0]
    victim.write_text(victim.read_text() + "It is sometimes combined with a short neck massage.\n")
    out["change"] = run()
    victim.unlink()
    out["remove"] = run()
    t0 = time.perf_counter()
    index = ix.load(s.index_dir)
    t1 = time.perf_counter()
    subjects.for_index(index, s.corpus_dir)
    out["swap"] = (t1 - t0, time.perf_counter() - t1)
    out["size"] = (len(index.docs), len(index.passages), int(len(index.sent_passage)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="articles added one by one per size (median reported)")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("ASSISTANT_BENCH_CACHE", "")) if os.environ.get(
        "ASSISTANT_BENCH_CACHE") else Path(tempfile.gettempdir()) / "assistant-bench-reindex")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached 1,000-article index")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from assistant.embedder import get_embedder
    from assistant.reindex import reindex

    t = time.perf_counter()
    embedder = get_embedder()
    embedder.encode_passages(["warm up"])
    print(f"model loaded in {time.perf_counter() - t:.1f}s (not counted below)")
    cache = large_cache(args.cache, embedder, args.rebuild)
    extra = synthetic_articles(args.repeat, start=N_LARGE)  # never in either corpus

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-reindex-") as tmp:
        small = Path(tmp) / "small"
        write_articles(small / "corpus", synthetic_articles(N_SMALL))
        reindex(_settings(small), embedder)
        results[N_SMALL] = bench_size(small, embedder, extra, args.repeat)
        large = Path(tmp) / "large"
        shutil.copytree(cache / "corpus", large / "corpus")  # copy2: mtimes kept, ctimes new
        shutil.copytree(cache / "index", large / "index")
        results[N_LARGE] = bench_size(large, embedder, extra, args.repeat)

    print()
    print(f"{'':34}{N_SMALL:>10} articles{N_LARGE:>10} articles")
    rows = [
        ("no-op reindex after copying", "noop_after_copy"),
        ("no-op reindex", "noop"),
        ("add one article (median)", "add"),
        ("change one article", "change"),
        ("remove one article", "remove"),
    ]
    for label, key in rows:
        a, b = results[N_SMALL][key][0], results[N_LARGE][key][0]
        print(f"{label:34}{a * 1000:>12.0f} ms{b * 1000:>14.0f} ms")
    for n in (N_SMALL, N_LARGE):
        print(f"  add runs, {n:>4} articles: " + ", ".join(f"{x * 1000:.0f}" for x in results[n]["add_all"]) + " ms")
    for n in (N_SMALL, N_LARGE):
        print(f"  add, {n:>4} articles: {_fmt(results[n]['add'][1])}")
    for n in (N_SMALL, N_LARGE):
        print(f"  no-op after copy, {n:>4} articles: {_fmt(results[n]['noop_after_copy'][1])}")
    for n in (N_SMALL, N_LARGE):
        d, p, sn = results[n]["size"]
        load, subj = results[n]["swap"]
        print(f"  a worker swapping to the new index ({d} articles, {p} passages, {sn} sentences): "
              f"load {load * 1000:.0f} ms + subjects {subj * 1000:.0f} ms")
    ratio = results[N_LARGE]["add"][0] / max(1e-9, results[N_SMALL]["add"][0])
    print(f"\nadding one article to {N_LARGE} articles costs {ratio:.1f}x what adding it to {N_SMALL} does")


if __name__ == "__main__":
    main()

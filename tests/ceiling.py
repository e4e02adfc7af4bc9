"""What retrieval alone can reach on a SQuAD-style set (not a test; README, "What retrieval alone
can reach").

    python tests/ceiling.py [covid|xquad]        env ABLATE_DIR (indexes kept by tests/ablate.py)

Abstention off, default settings, no history. Prints the share of questions whose answer text lies
inside some passage, inside a candidate passage, and in the top 1 / top 5; how often the article
the question was written on comes first, and how the answer ranks when it does; the top 5 with at
most 2 or 3 passages per article; and how many wrong top answers are passages under 25 words.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablate  # noqa: E402  (indexes and questions, built and kept as the ablation does)

from assistant import evaluation as ev  # noqa: E402
from assistant.config import Settings  # noqa: E402

SHORT = 25  # words


def main() -> None:
    setname = sys.argv[1] if len(sys.argv) > 1 else "covid"
    a = ablate.assistant(setname, replace(Settings(), abstain_threshold=0.0))
    loaded = a._current()
    ix, r = loaded.index, loaded.retriever
    texts = [p.text for p in ix.passages]
    qs = ev.squad_questions(ablate.SOURCES[setname])
    n = len(qs)
    c = dict.fromkeys(["in_passage", "in_candidate", "top1", "top5", "paper_first", "paper_first_top1",
                       "paper_first_top5", "other_top5", "cap2_top5", "cap3_top5", "wrong", "wrong_short", "right_short"], 0)
    for q, vec in zip(qs, ablate.EMBEDDER.encode_queries([q["question"] for q in qs])):
        answers = [t for t in (x["text"].strip() for x in q["answers"]) if t]
        holds = [i for i, t in enumerate(texts) if any(x in t for x in answers)]
        c["in_passage"] += bool(holds)
        query = r.prepare(q["question"], vec)
        sig = r.signals(query)
        c["in_candidate"] += sig is not None and bool(set(holds) & set(sig.cand.tolist()))
        hits = r.search(query, k=30)
        rows = [h.row for h in hits]
        ok = [row in holds for row in rows]
        docs = [ix.passages[row].doc_id for row in rows]
        c["top1"] += any(ok[:1])
        c["top5"] += any(ok[:5])
        first = bool(docs) and docs[0] == q.get("doc_id")
        c["paper_first"] += first
        c["paper_first_top1"] += first and any(ok[:1])
        c["paper_first_top5"] += first and any(ok[:5])
        c["other_top5"] += (not first) and any(ok[:5])
        for cap in (2, 3):
            seen: dict[str, int] = {}
            keep, rest = [], []
            for d, good in zip(docs, ok):
                seen[d] = seen.get(d, 0) + 1
                (keep if seen[d] <= cap else rest).append(good)
            c[f"cap{cap}_top5"] += any((keep + rest)[:5])
        if rows:
            short = len(texts[rows[0]].split()) < SHORT
            c["wrong"] += not ok[0]
            c["wrong_short"] += (not ok[0]) and short
            c["right_short"] += ok[0] and short
    pf = c["paper_first"] or 1
    print(f"{setname}: {n} questions")
    print(f"  answer inside some passage {c['in_passage'] / n:.3f}, inside a candidate {c['in_candidate'] / n:.3f}")
    print(f"  answer in top-1 {c['top1'] / n:.3f}, top-5 {c['top5'] / n:.3f}")
    print(f"  its article first {c['paper_first'] / n:.3f}; then the answer in top-1 {c['paper_first_top1'] / pf:.3f}, "
          f"top-5 {c['paper_first_top5'] / pf:.3f}; otherwise top-5 {c['other_top5'] / max(1, n - c['paper_first']):.3f}")
    print(f"  top-5 with at most 2 / 3 passages per article: {c['cap2_top5'] / n:.3f} / {c['cap3_top5'] / n:.3f}")
    print(f"  top answers under {SHORT} words: {c['wrong_short']} of {c['wrong']} wrong, "
          f"{c['right_short']} of {n - c['wrong']} right")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

"""Measure answer quality: conversation question sets (dev.jsonl format) and SQuAD-style corpora."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import tempfile
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from .assistant import Assistant
from .config import Settings
from .errors import AssistantError

log = logging.getLogger(__name__)


@dataclass
class TurnResult:
    case: str
    turn: int
    question: str
    history: list[str]
    expect_abstain: bool
    abstained: bool
    rank: int | None  # 1-based rank of the first passage holding an expected string
    resolved: str
    got: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    turns: list[TurnResult]

    def _answerable(self, followups: bool | None = None) -> list[TurnResult]:
        out = [t for t in self.turns if not t.expect_abstain]
        if followups is not None:
            out = [t for t in out if (t.turn > 0) == followups]
        return out

    def hit_at(self, k: int, followups: bool | None = None) -> float:
        ts = self._answerable(followups)
        return sum(1 for t in ts if t.rank is not None and t.rank <= k) / len(ts) if ts else float("nan")

    def mrr(self, followups: bool | None = None) -> float:
        ts = self._answerable(followups)
        return sum(1.0 / t.rank for t in ts if t.rank) / len(ts) if ts else float("nan")

    def abstention(self) -> tuple[float, float]:
        """(precision, recall) of abstaining: of the abstentions, how many were right; of the
        questions that should abstain, how many did."""
        did = [t for t in self.turns if t.abstained]
        should = [t for t in self.turns if t.expect_abstain]
        p = sum(1 for t in did if t.expect_abstain) / len(did) if did else 1.0
        r = sum(1 for t in should if t.abstained) / len(should) if should else 1.0
        return p, r

    def misses(self) -> list[TurnResult]:
        return [t for t in self.turns if (t.expect_abstain != t.abstained) or (not t.expect_abstain and t.rank != 1)]

    def summary(self) -> dict:
        p, r = self.abstention()
        return {
            "turns": len(self.turns),
            "answerable": len(self._answerable()),
            "hit@1": round(self.hit_at(1), 3),
            "hit@3": round(self.hit_at(3), 3),
            "mrr": round(self.mrr(), 3),
            "single_turn_hit@1": round(self.hit_at(1, followups=False), 3),
            "single_turn_hit@3": round(self.hit_at(3, followups=False), 3),
            "followup_hit@1": round(self.hit_at(1, followups=True), 3),
            "abstain_precision": round(p, 3),
            "abstain_recall": round(r, 3),
            "answerable_abstained": sum(1 for t in self._answerable() if t.abstained),
        }


def load_cases(path: Path) -> list[dict]:
    cases = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AssistantError(f"{path}: cannot be read as UTF-8 text ({e})") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
            assert isinstance(case, dict) and isinstance(case["turns"], list) and case["turns"]
            assert all(isinstance(t, dict) and isinstance(t.get("q"), str) for t in case["turns"])
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as e:
            raise AssistantError(f"{path}:{n}: not a question case ({e.__class__.__name__}); "
                                 'expected {"id", "turns": [{"q", "expect_any", "expect_abstain"}]}') from e
        cases.append(case)
    return cases


def evaluate_cases(assistant: Assistant, cases: list[dict], k: int = 10, mode: str = "conversation") -> EvalReport:
    """Ask every turn with the earlier turns as history. `mode` compares ways of searching:
    'conversation' (the product), 'alone' (the question without history), 'concat' (question
    plus all earlier questions, as one query)."""
    if mode not in ("conversation", "alone", "concat"):
        raise AssistantError(f"unknown mode {mode!r}; choose from conversation, alone, concat")
    results = []
    for case in cases:
        history: list[str] = []
        for i, turn in enumerate(case["turns"]):
            q = turn["q"]
            if turn.get("context"):  # asked earlier only as history (exported feedback): not scored
                history.append(q)
                continue
            if mode == "alone":
                res = assistant.ask(q, [], top_k=k)
            elif mode == "concat":
                res = assistant.ask(" ".join(history + [q])[-assistant.settings.max_question_chars :], [], top_k=k)
            else:
                res = assistant.ask(q, history, top_k=k)
            expect = turn.get("expect_any") or []
            rank = None
            for r, a in enumerate(res.answers, 1):
                if any(e in a.text for e in expect):
                    rank = r
                    break
            results.append(TurnResult(
                case=case.get("id", "?"), turn=i, question=q, history=list(history),
                expect_abstain=bool(turn.get("expect_abstain")), abstained=res.abstained, rank=rank,
                resolved=res.resolved_question, got=[a.text for a in res.answers[:3]],
            ))
            history.append(q)
    return EvalReport(results)


# --- SQuAD-style corpora ---------------------------------------------------------------------

@dataclass
class SquadReport:
    questions: int
    top1: float
    top3: float
    top5: float
    mrr: float
    abstained: float
    median_passage_words: float
    passages: int
    highlight: float = 0.0  # share of all questions whose top answer's highlighted sentence(s) hold an answer


def _jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSON-lines file; a malformed row is an AssistantError naming file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AssistantError(f"{path}: cannot be read as UTF-8 text ({e})") from e
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            assert isinstance(row, dict) and all(k in row for k in required)
        except (json.JSONDecodeError, AssertionError) as e:
            raise AssistantError(f"{path}:{n}: expected a JSON object with {', '.join(required)}") from e
        rows.append(row)
    return rows


def write_squad_corpus(src: Path, corpus_dir: Path) -> None:
    """corpus.jsonl paragraphs -> one Markdown article each (title in front matter, text as is)."""
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for d in _jsonl(Path(src) / "corpus.jsonl", ("_id", "text")):
        title = str(d.get("title", "")).replace("_", " ").replace('"', "'")
        body = "\n\n".join(p.strip() for p in str(d["text"]).splitlines() if p.strip())
        (corpus_dir / f"{d['_id']}.md").write_text(f'---\ntitle: "{title}"\n---\n{body}\n', encoding="utf-8")


_MODES = {
    "dense": dict(w_dense_passage=1.0, w_bm25_passage=0.0, w_dense_sentence=0.0, w_bm25_sentence=0.0),
    "bm25": dict(w_dense_passage=0.0, w_bm25_passage=1.0, w_dense_sentence=0.0, w_bm25_sentence=0.0),
    "hybrid": {},
}


def _built(src: Path, tmp: str, settings: Settings, index_dir: Path | None, mode: str, abstain: bool,
           progress: bool) -> Assistant:
    """An Assistant over the folder's corpus.jsonl, indexed (reusing `index_dir` when given)."""
    if mode not in _MODES:
        raise AssistantError(f"unknown mode {mode!r}; choose from {', '.join(_MODES)}")
    corpus_dir = Path(tmp) / "corpus"
    write_squad_corpus(src, corpus_dir)
    idx = Path(index_dir) if index_dir else Path(tmp) / "index"
    s = replace(settings, corpus_dir=corpus_dir, index_dir=idx, **_MODES[mode])
    if not abstain:
        s = replace(s, abstain_threshold=0.0)
    a = Assistant(s)
    a.reindex(progress=progress)
    return a


def squad_questions(src: Path) -> list[dict]:
    """questions.jsonl rows, each checked to carry "answers": [{"text": ...}]."""
    questions = _jsonl(Path(src) / "questions.jsonl", ("question",))
    for q in questions:
        raw = q.get("answers")
        if not isinstance(raw, list) or not all(isinstance(x, dict) and isinstance(x.get("text"), str) for x in raw):
            raise AssistantError(f"{src}/questions.jsonl: question {q.get('_id', q['question'])!r} needs "
                                 '"answers": [{"text": ...}]')
    return questions


def highlighted(answer) -> str:
    """The highlighted text of an answer, from the first highlighted sentence to the last."""
    if not answer.highlight:
        return ""
    return answer.text[answer.highlight[0].start : answer.highlight[-1].end]


STRIP_ANSWERS = True  # False: match the gold text as stored (the figures before 2026-12-02)


def score_squad(a: Assistant, questions: list[dict]) -> SquadReport:
    """Ask every question (no history) and score answer-in-top-k and the highlight."""
    ranks, abst, lit = [], 0, 0
    for q in questions:
        res = a.ask(q["question"][: a.settings.max_question_chars], top_k=10)
        abst += res.abstained
        # gold answers are matched without their edge whitespace: a quarter of covidqa-dev's
        # begin or end with a space, which no sentence-aligned highlight (and few passages) holds
        answers = [t for t in (x["text"].strip() if STRIP_ANSWERS else x["text"] for x in q["answers"]) if t]
        rank = next((r for r, ans in enumerate(res.answers, 1) if any(t in ans.text for t in answers)), None)
        ranks.append(rank)
        if res.answers:
            h = highlighted(res.answers[0])
            lit += bool(h) and any(t in h for t in answers)
    lengths = [len(p.text.split()) for p in a._current().index.passages]
    n = len(ranks) or 1
    return SquadReport(
        questions=len(ranks),
        top1=sum(1 for r in ranks if r and r <= 1) / n,
        top3=sum(1 for r in ranks if r and r <= 3) / n,
        top5=sum(1 for r in ranks if r and r <= 5) / n,
        mrr=sum(1 / r for r in ranks if r) / n,
        abstained=abst / n,
        median_passage_words=statistics.median(lengths) if lengths else 0,
        passages=len(lengths),
        highlight=lit / n,
    )


def _require(src: Path, flag: str, questions: str) -> None:
    """An eval folder holds corpus.jsonl and its question file; say which one is missing."""
    for name in ("corpus.jsonl", questions):
        if not (src / name).is_file():
            raise AssistantError(f"{src}/ has no {name}; {flag} expects a folder with corpus.jsonl and {questions}")


def evaluate_squad(
    src: Path,
    settings: Settings | None = None,
    index_dir: Path | None = None,
    mode: str = "hybrid",
    abstain: bool = True,
    progress: bool = False,
) -> SquadReport:
    """Build a throw-away index of the folder's corpus.jsonl (or reuse `index_dir`) and score questions.jsonl."""
    src = Path(src)
    _require(src, "--squad", "questions.jsonl")
    questions = squad_questions(src)
    with _throwaway_schema(settings or Settings()) as s, tempfile.TemporaryDirectory(prefix="assistant-squad-") as tmp:
        a = _built(src, tmp, s, index_dir, mode, abstain, progress)
        return score_squad(a, questions)


@contextlib.contextmanager
def _throwaway_schema(settings: Settings):
    """With a database: the settings of a throw-away library in a schema of its own, dropped
    afterwards (an evaluation never touches the library being served). Else the settings as given."""
    if not settings.database_url:
        yield settings
        return
    settings = replace(settings, database_schema=f"eval_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    try:
        yield settings
    finally:
        from . import pgstore

        db = pgstore.database(settings)
        try:
            pgstore.drop_schema(db)
        except AssistantError as e:
            log.warning("could not drop the evaluation schema %s: %s", settings.database_schema, e)
        pgstore.close_database(settings)


# --- MTRAG-style conversations ---------------------------------------------------------------

@dataclass
class MtragReport:
    """Conversations whose last user turn is the question; a hit when an answer comes from a gold passage."""

    mode: str
    conversations: int
    with_gold: int  # last turns with gold passages that are not UNANSWERABLE (the retrieval figures' base)
    top1: float
    top5: float
    followup_top5: float  # the same, over last turns that have earlier user turns
    followups: int
    answerable_abstained: float  # share of ANSWERABLE last turns that abstained
    unanswerable_abstained: float  # share of UNANSWERABLE last turns that abstained
    by_label: dict = field(default_factory=dict)  # answerability label -> share abstained


def _label(q: dict) -> str:
    a = q.get("answerability")
    return str(a[0] if isinstance(a, list) and a else a or "ANSWERABLE")


def mtrag_queries(src: Path) -> list[dict]:
    """queries.jsonl rows: the question (`last_turn`), its history (earlier user turns), gold ids, label."""
    out = []
    for q in _jsonl(Path(src) / "queries.jsonl", ("conversation", "last_turn")):
        users = [t.get("text", "") for t in q["conversation"] if isinstance(t, dict) and t.get("speaker") == "user"]
        if users and users[-1].strip() == str(q["last_turn"]).strip():
            users = users[:-1]
        out.append({"id": q.get("_id", "?"), "question": str(q["last_turn"]), "history": [u for u in users if u.strip()],
                    "gold": set(q.get("gold_doc_ids") or []), "label": _label(q)})
    return out


def score_mtrag(a: Assistant, queries: list[dict], mode: str = "conversation") -> MtragReport:
    """Ask each last turn as `mode` says: 'conversation' (with its history), 'alone', or 'concat'
    (earlier user turns and the question as one query)."""
    if mode not in ("conversation", "alone", "concat"):
        raise AssistantError(f"unknown mode {mode!r}; choose from conversation, alone, concat")
    limit = a.settings.max_question_chars
    top1 = top5 = fu5 = n_gold = n_fu = 0
    abst: dict[str, list[bool]] = {}
    for q in queries:
        if mode == "alone":
            res = a.ask(q["question"][:limit], [], top_k=5)
        elif mode == "concat":
            res = a.ask(" ".join(q["history"] + [q["question"]])[-limit:], [], top_k=5)
        else:
            res = a.ask(q["question"][:limit], [h[:limit] for h in q["history"]][-a.settings.max_history :], top_k=5)
        abst.setdefault(q["label"], []).append(res.abstained)
        if not q["gold"] or q["label"] == "UNANSWERABLE":
            continue
        rank = next((r for r, ans in enumerate(res.answers, 1) if ans.source.doc_id in q["gold"]), None)
        n_gold += 1
        top1 += rank == 1
        top5 += rank is not None and rank <= 5
        if q["history"]:
            n_fu += 1
            fu5 += rank is not None and rank <= 5
    share = {k: sum(v) / len(v) for k, v in abst.items()}
    return MtragReport(
        mode=mode, conversations=len(queries), with_gold=n_gold, top1=top1 / max(1, n_gold), top5=top5 / max(1, n_gold),
        followup_top5=fu5 / max(1, n_fu), followups=n_fu,
        answerable_abstained=share.get("ANSWERABLE", 0.0), unanswerable_abstained=share.get("UNANSWERABLE", 0.0),
        by_label=share,
    )


def evaluate_mtrag(
    src: Path,
    settings: Settings | None = None,
    index_dir: Path | None = None,
    modes: tuple[str, ...] = ("conversation",),
    abstain: bool = True,
    progress: bool = False,
) -> list[MtragReport]:
    """Index the folder's corpus.jsonl (one article per passage) and score queries.jsonl in each mode."""
    src = Path(src)
    _require(src, "--mtrag", "queries.jsonl")
    queries = mtrag_queries(src)
    with _throwaway_schema(settings or Settings()) as s, tempfile.TemporaryDirectory(prefix="assistant-mtrag-") as tmp:
        a = _built(src, tmp, s, index_dir, "hybrid", abstain, progress)
        return [score_mtrag(a, queries, m) for m in modes]

"""Settings: the one place for paths, model, retrieval weights and limits."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

DEFAULT_CORPUS_DIR = "corpus"
DEFAULT_INDEX_DIR = "index"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# The encoder (see embedder.py): onnx by default, the faster one measured here (README, "Speed").
ENCODERS = ("onnx", "torch")
DEFAULT_ENCODER = "onnx"


def encoder_name() -> str:
    """ASSISTANT_ENCODER=onnx|torch (default onnx). Anything else is a mistake worth saying."""
    from .errors import AssistantError

    name = (os.environ.get("ASSISTANT_ENCODER") or DEFAULT_ENCODER).strip().lower()
    if name not in ENCODERS:
        raise AssistantError(f"ASSISTANT_ENCODER={name!r} is not an encoder; choose from {', '.join(ENCODERS)}.")
    return name


def encoder_threads(encoder: str) -> int | None:
    """ASSISTANT_THREADS: threads one encode may use in one process. Default for onnx: every core
    (one process answering or building alone; `assistant serve` sets cores / workers for its
    workers, so that concurrent requests in several workers do not fight for cores); torch's own
    default for torch."""
    from .errors import AssistantError

    raw = os.environ.get("ASSISTANT_THREADS", "").strip()
    if not raw:
        return (os.cpu_count() or 1) if encoder == "onnx" else None
    if not raw.isdigit() or int(raw) < 1:
        raise AssistantError(f"ASSISTANT_THREADS={raw!r} must be a whole number of at least 1.")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """Tunable knobs. The passage fusion weights are fitted (tests/fit_fusion.py); the rest were
    chosen on XQuAD and the dev set (see README, "Numbers")."""

    corpus_dir: Path = Path(DEFAULT_CORPUS_DIR)
    index_dir: Path = Path(DEFAULT_INDEX_DIR)

    # chunking: passages of a few sentences
    passage_target_words: int = 90
    passage_max_words: int = 150

    # retrieval: min-max fused scores of four signals, plus coverage and proximity below. The six
    # passage weights are one listwise fit over XQuAD and covidqa-dev (tests/fit_fusion.py, two
    # libraries as unlike as short Wikipedia paragraphs and long papers; each alone transfers to
    # the other), rounded, the four signals' summing to 1 (README, "Fusion weights, fitted")
    w_dense_passage: float = 0.33
    w_bm25_passage: float = 0.27
    w_dense_sentence: float = 0.30
    w_bm25_sentence: float = 0.10
    candidates: int = 50
    # "What is X?": bonus for a passage with a sentence that defines X ("X, also known as Y, is ...")
    definition_bonus: float = 0.1
    # article prior: the article's own cosine, and its best candidate passage's fused score
    w_doc_dense: float = 0.0
    w_doc_best: float = 0.0
    # "How many ...?" wants a number, "Who ...?" a name: bonus for a sentence holding one (highlight),
    # and for a passage whose relevant sentence does
    w_kind_sentence: float = 0.3
    w_kind_passage: float = 0.1
    # a follow-up's earlier questions, scored alongside it at passage level, with this weight, when
    # the reader finds no subject in play (conversation.py); abstention then judges it with them too
    w_context: float = 0.5
    # the answering sentence (issue 10): the share of the question's distinct words that one
    # sentence holds (its words near each other), for the passage (its best sentence's; fitted
    # with the four above) and for the highlight
    w_cover_passage: float = 0.41
    w_cover_sentence: float = 0.6
    # the question's adjacent words near each other in one sentence (Retriever._proximity), for the
    # passage (fitted with the above) and for the highlight (no gain measured: README, "Proximity")
    w_prox_passage: float = 0.29
    w_prox_sentence: float = 0.0

    # extraction
    highlight_ratio: float = 0.85
    dedup_similarity: float = 0.9

    # abstention: the best answer's calibrated confidence must reach this
    abstain_threshold: float = 0.5

    # limits
    max_question_chars: int = 1000
    max_history: int = 20
    max_top_k: int = 10

    # PostgreSQL + pgvector instead of the index folder (None: the folder; see pgstore.py)
    database_url: str | None = None
    database_schema: str = "assistant"
    database_statement_timeout_ms: int = 30_000
    # a replica keeps answering from memory this long while the database does not answer, then 503
    database_grace_seconds: float = 10.0

    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Defaults, then ASSISTANT_CORPUS_DIR / ASSISTANT_INDEX_DIR / ASSISTANT_DATABASE_URL (and
        ASSISTANT_DATABASE_SCHEMA, ASSISTANT_DATABASE_GRACE), then explicit overrides."""
        s = cls(
            corpus_dir=Path(os.environ.get("ASSISTANT_CORPUS_DIR", DEFAULT_CORPUS_DIR)),
            index_dir=Path(os.environ.get("ASSISTANT_INDEX_DIR", DEFAULT_INDEX_DIR)),
            database_url=os.environ.get("ASSISTANT_DATABASE_URL") or None,
            database_schema=os.environ.get("ASSISTANT_DATABASE_SCHEMA") or "assistant",
            database_grace_seconds=float(os.environ.get("ASSISTANT_DATABASE_GRACE") or 10.0),
        )
        clean = {k: (Path(v) if k.endswith("_dir") else v) for k, v in overrides.items() if v is not None}
        return replace(s, **clean)

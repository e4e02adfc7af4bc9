"""One turn of a conversation: read the question against the earlier turns, search, answer.

(First version: the question is searched as asked. Subjects, aliases and comparisons land
with the conversation issue.)
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import Settings
from .embedder import Embedder
from .extraction import ABSTAIN_MESSAGE, answers_from_hits, should_abstain
from .index import Index
from .models import AskResponse
from .retrieval import Retriever


@dataclass
class Resolved:
    """How a turn is read: the text to search, and the subjects it is about."""

    query: str
    subjects: list[str] = field(default_factory=list)
    compare: bool = False


def resolve(question: str, history: list[str] | None = None) -> Resolved:
    return Resolved(query=question.strip())


def answer_turn(
    index: Index, retriever: Retriever, embedder: Embedder, settings: Settings,
    question: str, history: list[str], top_k: int,
) -> AskResponse:
    turn = resolve(question, history)
    q = retriever.prepare(turn.query, embedder.encode_query(turn.query))
    hits = retriever.search(q, k=max(10, top_k * 3))
    if should_abstain(index, q, hits, settings):
        return AskResponse(question=question, resolved_question=turn.query, abstained=True, message=ABSTAIN_MESSAGE)
    answers = answers_from_hits(index, hits, settings, top_k)
    return AskResponse(question=question, resolved_question=turn.query, abstained=False, answers=answers)

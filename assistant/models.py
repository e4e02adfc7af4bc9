"""Pydantic models for everything that crosses a boundary: answers, documents, reindex reports."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Span(BaseModel):
    """Character offsets, end exclusive."""

    start: int
    end: int


class Source(BaseModel):
    doc_id: str
    title: str
    path: str = Field(description="Path of the article relative to the corpus folder.")
    start: int = Field(description="Offset of the passage in the article's clean text.")
    end: int
    url: str | None = Field(default=None, description="Link to the article view at this passage (API only).")


class AlsoIn(BaseModel):
    doc_id: str
    title: str
    path: str
    url: str | None = None


class Answer(BaseModel):
    text: str = Field(description="The passage, verbatim from the article's clean text.")
    highlight: list[Span] = Field(description="The answering sentence(s), as offsets inside `text`.")
    score: float
    source: Source
    also_in: list[AlsoIn] = Field(default_factory=list, description="Other articles holding the same passage.")
    about: str | None = Field(default=None, description="The subject this answer is evidence for, in a comparison.")


class AskResponse(BaseModel):
    question: str
    resolved_question: str = Field(description="What was actually searched, after reading the conversation.")
    abstained: bool
    message: str | None = None
    answers: list[Answer] = Field(default_factory=list)


class DocumentInfo(BaseModel):
    doc_id: str
    title: str
    path: str
    passages: int
    indexed_at: str


class PassageSpan(BaseModel):
    id: str
    start: int
    end: int


class ArticleView(BaseModel):
    doc_id: str
    title: str
    path: str
    text: str = Field(description="The article's clean text.")
    passages: list[PassageSpan]
    indexed_at: str


class ReindexReport(BaseModel):
    articles: int
    passages: int
    added: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    unchanged: int = 0
    skipped: list[str] = Field(default_factory=list, description="Files that could not be read.")
    embedded_passages: int = 0
    seconds: float = 0.0

    @property
    def touched(self) -> bool:
        return bool(self.added or self.changed or self.removed)


class Health(BaseModel):
    status: str
    index_loaded: bool
    articles: int
    passages: int
    model: str
    built_at: str | None

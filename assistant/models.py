"""Pydantic models for everything that crosses a boundary: answers, documents, reindex reports."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator


class Span(BaseModel):
    """Character offsets, end exclusive."""

    start: int
    end: int


class Citation(BaseModel):
    """What an article says about itself (null when unknown): never part of the answer text."""

    author: str | None = Field(default=None, description="Who wrote the article, as the article names them.")
    published: str | None = Field(default=None, description="Publication (or last update) date, ISO 8601 (YYYY-MM-DD).")
    site: str | None = Field(default=None, description="The site or publisher's name (or the host of original_url).")
    original_url: str | None = Field(default=None, description="Where the article was published on the web.")


class _SourceFields(BaseModel):
    doc_id: str
    title: str
    path: str = Field(description="Path of the article relative to the corpus folder.")
    start: int = Field(description="Offset of the passage in the article's clean text.")
    end: int


class Source(Citation, _SourceFields):  # (bases in this order: the JSON lists doc_id first)
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


class _DocumentFields(BaseModel):
    doc_id: str
    title: str
    path: str
    passages: int
    indexed_at: str


class DocumentInfo(Citation, _DocumentFields):
    """An indexed article and what it says about itself."""


class PassageSpan(BaseModel):
    id: str
    start: int
    end: int


class _ArticleFields(BaseModel):
    doc_id: str
    title: str
    path: str
    text: str = Field(description="The article's clean text.")
    passages: list[PassageSpan]
    indexed_at: str


class ArticleView(Citation, _ArticleFields):
    """An article's clean text, its passages and what it says about itself."""


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


# --- feedback on answers ----------------------------------------------------------------------

_MAX_TEXT = 1000


class FeedbackIn(BaseModel):
    """A reader's verdict on one answer card. Nothing in it identifies the reader."""

    model_config = ConfigDict(extra="forbid")

    question: StrictStr = Field(description="The question as the reader typed it.", max_length=_MAX_TEXT)
    history: list[StrictStr] = Field(default_factory=list, max_length=20,
                                     description="The earlier questions of the conversation, oldest first.")
    resolved_question: StrictStr | None = Field(default=None, max_length=_MAX_TEXT)
    doc_id: StrictStr | None = Field(default=None, max_length=300,
                                     description="The answer's article (null: feedback on an abstention).")
    start: StrictInt | None = Field(default=None, ge=0, description="The passage's offsets in the article.")
    end: StrictInt | None = Field(default=None, ge=0)
    highlight: StrictStr | None = Field(default=None, max_length=2 * _MAX_TEXT,
                                        description="The highlighted (answering) sentence of the card.")
    helpful: StrictBool

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("The question is empty.")
        return v

    @field_validator("history")
    @classmethod
    def _short_items(cls, v: list[str]) -> list[str]:
        if any(len(h) > _MAX_TEXT for h in v):
            raise ValueError(f"Each history item must be at most {_MAX_TEXT} characters.")
        return v


class FeedbackOut(BaseModel):
    id: str = Field(description="Send DELETE /feedback/{id} to take the feedback back.")


class FeedbackDeleted(BaseModel):
    id: str
    deleted: bool = True


class FeedbackItem(FeedbackIn):
    """Feedback as the admin page lists it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    at: str = Field(description="When it was given (UTC, ISO 8601).")
    title: str | None = None


class LoggedQuestion(BaseModel):
    """One entry of the question log (no reader identity: no IP, no cookie)."""

    id: int
    at: str
    question: str
    resolved_question: str
    abstained: bool
    top_doc: str | None = None
    top_score: float | None = None
    mark: str | None = Field(default=None, description="`unanswerable`: the owner says the library should abstain.")


class QuestionGroup(BaseModel):
    """Abstained questions that mean nearly the same: an article the library is missing."""

    count: int
    latest_at: str
    examples: list[LoggedQuestion] = Field(description="The latest few, newest first.")
    ids: list[int] = Field(description="Every question in the group.")
    marked_unanswerable: bool = False

"""The core's exceptions. Faces translate them: the CLI to exit code 2, the API to 4xx."""


class AssistantError(Exception):
    """Base class: a problem a person can act on, with a message that says how."""


class NotIndexedError(AssistantError):
    """No index has been built yet."""


class InvalidQuestionError(AssistantError):
    """The question is empty, too long or otherwise unusable."""


class DocumentNotFoundError(AssistantError):
    """No indexed article has that id."""


class UnsupportedFileError(AssistantError):
    """A file type the corpus cannot read."""


class ReindexBusyError(AssistantError):
    """Another reindex holds the lock."""


class StoreUnavailableError(AssistantError):
    """The database holding the index is down, unreachable or not answering in time (HTTP 503)."""

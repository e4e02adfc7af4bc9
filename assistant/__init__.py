"""Extractive, cited, conversational question answering over a folder of articles."""
from .assistant import Assistant
from .config import Settings
from .models import Answer, AskResponse, ReindexReport

__all__ = ["Assistant", "Settings", "Answer", "AskResponse", "ReindexReport"]
__version__ = "0.1.0"

"""Shared fixtures. The real model is loaded once per session (assistant.embedder caches it)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["tests.conftest_server", "tests.fixtures_core", "tests.fixtures_pg"]

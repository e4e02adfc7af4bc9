"""Shared fixtures. The real model is loaded once per session (assistant.embedder caches it)."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The ONNX export is made for real once per test session (checked against torch), in a folder of
# its own that every test, subprocess and server of the session shares; set it to reuse one.
if not os.environ.get("ASSISTANT_ONNX_CACHE"):
    os.environ["ASSISTANT_ONNX_CACHE"] = tempfile.mkdtemp(prefix="assistant-onnx-")
    atexit.register(shutil.rmtree, os.environ["ASSISTANT_ONNX_CACHE"], True)

pytest_plugins = ["tests.conftest_server", "tests.fixtures_core", "tests.fixtures_pg"]

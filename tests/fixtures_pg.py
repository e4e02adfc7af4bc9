"""A real PostgreSQL 16 with pgvector for the tests, started and stopped by the session.

The PyPI package `pgserver` (a test dependency) bundles PostgreSQL and pgvector: nothing is
installed by hand, and `make test` / CI start it here in a temporary folder. The server listens
on a Unix socket in that folder only (no TCP port). Each test gets a schema of its own
(`pg_settings`), so tests never see each other's libraries.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest



@dataclass
class PgServer:
    url: str
    data_dir: Path
    server: object  # pgserver.PostgresServer

    def stop(self) -> None:
        self.server.cleanup()


@contextlib.contextmanager
def start_postgres(prefix: str = "pg-") -> Iterator[PgServer]:
    """Start a throw-away PostgreSQL in a short temp path (Unix socket paths are limited to ~100 bytes)."""
    data = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" (pgserver's lock folder)
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver

        srv = pgserver.get_server(data, cleanup_mode="delete")
    try:
        yield PgServer(srv.get_uri(), data, srv)
    finally:
        with contextlib.suppress(Exception):
            srv.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL for the whole session."""
    with start_postgres() as srv:
        yield srv


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_settings(pg_server, tmp_path):
    """Settings of a fresh library in its own schema of the session's database (dropped afterwards)."""
    from assistant import pgstore
    from assistant.config import Settings

    s = Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index",
                 database_url=pg_server.url, database_schema=new_schema())
    yield s
    with contextlib.suppress(Exception):
        pgstore.drop_schema(pgstore.database(s))
    pgstore.close_database(s)

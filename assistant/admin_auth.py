"""Who may use the admin routes: the admin token, as a bearer header (scripts) or as a signed
session cookie set by the sign-in form (the admin page).

The session is stateless, so it works across worker processes and replicas: the cookie holds
an expiry and an HMAC of it keyed by the admin token. Changing the token signs everyone out.
The cookie is HttpOnly, SameSite=Strict, and Secure when the page is served over HTTPS. A
request authorised by the cookie that changes anything must also carry the CSRF token (an HMAC
of the same expiry under another label) in the `X-CSRF-Token` header or a `csrf` form field,
and must not come from another origin. Wrong tokens on the sign-in form are slowed down: after
MAX_FAILURES within FAILURE_WINDOW seconds from one address, sign-in answers 429 for a while.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections import deque
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .http_base import ApiError

ADMIN_TOKEN_ENV = "ASSISTANT_ADMIN_TOKEN"
COOKIE = "assistant_admin"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
MAX_FAILURES = 5
FAILURE_WINDOW = 300.0
BEARER_HINT = f"send the token as the header `Authorization: Bearer <token>` (the server's {ADMIN_TOKEN_ENV})"
DISABLED_MESSAGE = (
    f"The admin routes are disabled. To enable them, start the server with {ADMIN_TOKEN_ENV} set to a "
    f"secret (e.g. `{ADMIN_TOKEN_ENV}=$(openssl rand -hex 24) assistant serve`)"
)

_BEARER = HTTPBearer(auto_error=False, scheme_name="admin token",
                     description=f"The value of {ADMIN_TOKEN_ENV} on the server.")


def admin_token() -> str:
    """The configured token ('' when the admin side is disabled). Read each time: tests and
    operators may change the environment without rebuilding the app."""
    return os.environ.get(ADMIN_TOKEN_ENV, "")


def _sign(token: str, label: str, expires: int) -> str:
    return hmac.new(token.encode("utf-8"), f"{label}:{expires}".encode(), hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    """Constant-time comparison of two strings, whatever characters a client put in them."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def token_matches(given: str, token: str) -> bool:
    return bool(token) and _same(given.strip(), token)


def new_session(token: str, now: float | None = None) -> tuple[str, int]:
    """(cookie value, expiry as a unix time)."""
    expires = int(now if now is not None else time.time()) + SESSION_SECONDS
    return f"{expires}.{_sign(token, 'session', expires)}", expires


def session_expiry(request: Request, token: str) -> int | None:
    """The expiry of a valid session cookie on this request, else None."""
    raw = request.cookies.get(COOKIE, "")
    exp_s, _, sig = raw.partition(".")
    if not token or not exp_s.isdigit() or not sig:
        return None
    expires = int(exp_s)
    if expires < time.time() or not _same(sig, _sign(token, "session", expires)):
        return None
    return expires


def csrf_token(token: str, expires: int) -> str:
    return _sign(token, "csrf", expires)


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Origin, Sec-Fetch-Site)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin != "null"
    o = urlsplit(origin)
    host = request.headers.get("host", "")
    return o.netloc == host


def check_csrf(request: Request, token: str, expires: int, form_value: str | None = None) -> None:
    given = request.headers.get(CSRF_HEADER) or form_value or ""
    if not same_origin(request) or not given or not _same(given, csrf_token(token, expires)):
        raise ApiError(403, "This request did not come from the admin page (missing or wrong CSRF token). "
                            "Reload the admin page and try again.")


def require_admin(request: Request, _docs: Annotated[Any, Depends(_BEARER)] = None) -> None:
    """403 while the admin side is disabled; then the bearer token, or the session cookie (plus
    the CSRF token for anything but GET/HEAD); 401 otherwise. Comparisons are constant-time.

    (`_docs` only shows the bearer scheme in /docs, with its Authorize button; the header is read here.)
    """
    token = admin_token()
    if not token:
        raise ApiError(403, f"{DISABLED_MESSAGE} and {BEARER_HINT}.")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        if not token_matches(given, token):
            raise StarletteHTTPException(401, "The admin token is wrong.", headers={
                "WWW-Authenticate": 'Bearer realm="assistant-admin", error="invalid_token"'})
        return
    expires = session_expiry(request, token)
    if expires is None:
        raise StarletteHTTPException(
            401, f"This route needs the admin token: {BEARER_HINT}, or sign in on the admin page (/admin).",
            headers={"WWW-Authenticate": 'Bearer realm="assistant-admin"'})
    if request.method not in ("GET", "HEAD"):
        check_csrf(request, token, expires)


class FailureThrottle:
    """Counts wrong sign-in tokens per client address (in this process) and says when to refuse."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.max_failures = max_failures
        self.window = window
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def retry_after(self, key: str) -> int:
        """Seconds to wait before trying again (0: go ahead)."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(key, now)
            if len(q) < self.max_failures:
                return 0
            return max(1, int(self.window - (now - q[0])) + 1)

    def failed(self, key: str) -> int:
        """Record a failure; returns how many there were in the window."""
        now = time.monotonic()
        with self._lock:
            q = self._recent(key, now)
            q.append(now)
            if len(self._fails) > 10_000:  # forget idle addresses
                for k in [k for k, v in self._fails.items() if not v]:
                    del self._fails[k]
            return len(q)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)

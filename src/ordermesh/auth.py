"""Bearer JWTs: HS256 only (the algorithm is pinned, never read from the token), with issuer,
audience and expiry checked. Transport-neutral: REST, gRPC and the CLI share it.

Two kinds of caller carry the same tokens: end users (the subject is the user id) and services
(the subject is ``service:NAME``, minted with :meth:`Tokens.issue_service`). Internal APIs
(payments, inventory, shipping) take service callers only: :func:`require_service`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import jwt

from ordermesh.clock import Clock, SystemClock
from ordermesh.config import Settings
from ordermesh.errors import FieldViolation, PermissionDenied, Unauthenticated, ValidationError

ALGORITHM = "HS256"
USER_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
SERVICE_PREFIX = "service:"


def check_user_id(user_id: str) -> str:
    if not USER_ID.fullmatch(user_id):
        raise ValidationError(f"invalid user id {user_id!r}: 1 to 128 letters, digits or . _ : @ -")
    return user_id


class Tokens:
    """Issues and verifies tokens. Verified tokens are cached (expiry still checked on every
    use): signature checks cost more than the rest of a cached read."""

    def __init__(self, settings: Settings, clock: Clock | None = None, cache_size: int = 4096) -> None:
        self._secret = settings.jwt_secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._clock = clock or SystemClock()
        self.max_ttl = timedelta(hours=settings.jwt_max_ttl_hours)
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, user_id: str, ttl: timedelta = timedelta(hours=12), **claims: Any) -> str:
        check_user_id(user_id)
        if ttl > self.max_ttl:  # (a negative ttl makes an expired token: tests want those)
            raise ValidationError(
                f"a token lives at most {self.max_ttl.total_seconds() / 3600:g} hours "
                "(ORDERMESH_JWT_MAX_TTL_HOURS)",
                [FieldViolation("ttl", "out of range")],
            )
        now = self._clock.now()
        payload = {
            "sub": user_id,
            "iss": self._issuer,
            "aud": self._audience,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            **claims,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def now(self) -> float:
        """The tokens' clock, as a POSIX timestamp."""
        return self._clock.now().timestamp()

    def issue_service(self, service: str, ttl: timedelta = timedelta(hours=1)) -> str:
        """A token for service-to-service calls: subject ``service:SERVICE``."""
        return self.issue(f"{SERVICE_PREFIX}{service}", ttl)

    def verify(self, token: str) -> str:
        """The token's subject (the user id), or ``Unauthenticated`` saying what is wrong."""
        now = self._clock.now().timestamp()
        hit = self._cache.get(token)
        if hit is not None:
            subject, exp = hit
            if now < exp:
                return subject
            del self._cache[token]
            raise Unauthenticated("token expired")
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud", "sub"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        # Expiry against our clock (injectable), not the library's wall clock.
        exp = float(claims["exp"])
        if now >= exp:
            raise Unauthenticated("token expired")
        if exp - now > self.max_ttl.total_seconds() + 60:  # a minute of clock skew
            raise Unauthenticated("token lives longer than this server accepts (ORDERMESH_JWT_MAX_TTL_HOURS)")
        subject = claims["sub"]
        if not isinstance(subject, str) or not USER_ID.fullmatch(subject):
            raise Unauthenticated("invalid token: bad subject")
        self._cache[token] = (subject, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return subject


class TokenSource:
    """A service's own token for its calls to other services, renewed well before it expires
    (signing one per call would cost more than the call's bookkeeping)."""

    def __init__(self, tokens: Tokens, service: str, ttl: timedelta = timedelta(hours=1)) -> None:
        self._tokens, self._service = tokens, service
        self._ttl = min(ttl, tokens.max_ttl)
        self._token = ""
        self._renew_at = 0.0

    def __call__(self) -> str:
        now = self._tokens.now()
        if now >= self._renew_at:
            self._token = self._tokens.issue_service(self._service, self._ttl)
            self._renew_at = now + self._ttl.total_seconds() / 2
        return self._token


def is_service(subject: str) -> bool:
    return subject.startswith(SERVICE_PREFIX)


def require_service(subject: str) -> str:
    """``subject`` if it is a service (``service:NAME``), else ``PermissionDenied``: an end user's
    token does not open an internal API."""
    if not is_service(subject):
        raise PermissionDenied(f"{subject!r} is not a service: this API takes service tokens only")
    return subject

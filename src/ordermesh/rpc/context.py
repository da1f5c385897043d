"""Per-call context set by the interceptors and read by handlers (no transport types leak into
the services: handlers see a user id and a deadline, nothing else)."""

from __future__ import annotations

from contextvars import ContextVar, Token

from ordermesh.resilience import deadline

_principal: ContextVar[str | None] = ContextVar("ordermesh_principal", default=None)


def current_principal() -> str:
    """The authenticated caller's user id (the auth interceptor sets it before any handler)."""
    user = _principal.get()
    if user is None:
        raise RuntimeError("no authenticated principal: is the auth interceptor installed?")
    return user


def remaining_seconds() -> float | None:
    """Seconds left before the call's deadline (monotonic clock), None when it has none; pass it
    on to anything the handler calls."""
    return deadline.remaining()


# Setters for the interceptors (``ordermesh.rpc.interceptors``). Every call runs in a fresh
# context, so nothing set here outlives the call; the tokens let tests undo a value.


def set_principal(user_id: str | None) -> Token[str | None]:
    """Make ``user_id`` the caller for the rest of the current call."""
    return _principal.set(user_id)


def principal_or_none() -> str | None:
    """The caller if one is authenticated (logging, public methods), else None."""
    return _principal.get()


def set_deadline(instant: float | None) -> Token[float | None]:
    """The current call's deadline on the ``time.monotonic()`` clock; None for none. The one
    ``resilience.deadline`` holds: the clients this call makes pass the rest of it on."""
    return deadline.set_deadline(instant)

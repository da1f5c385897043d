"""The guard a client builds for itself when it is given none: a standalone SDK client gets the
default policy with its own timeout and retries (a service passes its process's guard instead,
``Runtime.guard``, so every client of one downstream shares one breaker)."""

from __future__ import annotations

from ordermesh.resilience import Guard, Policy, RetryPolicy

UNTIL_THE_DEADLINE = 1_000  # attempts: "retry until the deadline" (the deadline stops it first)


def default_guard(downstream: str, timeout: float, retries: int | None) -> Guard:
    """``retries`` after the first attempt; None: until the deadline."""
    attempts = UNTIL_THE_DEADLINE if retries is None else retries + 1
    return Guard(downstream, Policy(timeout=timeout, retry=RetryPolicy(attempts=attempts, wait_jitter=0.05)))


__all__ = ["UNTIL_THE_DEADLINE", "default_guard"]

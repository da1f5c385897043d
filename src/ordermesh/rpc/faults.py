"""The link faults (``resilience.faults``) on a service's gRPC edge.

``rpc.interceptors.CallInterceptor`` calls :func:`inject` first thing in every call of a
non-public method (health and reflection are never faulted) while a link fault is set; with none,
a call costs one attribute check. Inside the interceptor's logging, metrics and error layers, so
an injected failure is logged, counted and answered as a real one. After the injected delay:

- error: UNAVAILABLE "injected fault";
- hang: held until the caller's deadline passes (gRPC then cancels the call: the caller sees
  DEADLINE_EXCEEDED); without one, for the server's default deadline (unary) or ``HOLD_BOUND``
  (streams), then DEADLINE_EXCEEDED;
- reset: grpc.aio gives a handler no access to its connection (HTTP/2 streams share one), so
  the call is answered UNAVAILABLE "connection reset (injected)", what a client sees of a reset;
- blackhole: no answer: held until the caller's deadline or cancellation ends it; without either,
  UNAVAILABLE after ``HOLD_BOUND`` seconds.
"""

from __future__ import annotations

from typing import Any

import grpc

from ordermesh.resilience.faults import HOLD_BOUND, FaultInjected, Faults, Outcome

Context = grpc.aio.ServicerContext[Any, Any]
_NO_DEADLINE = 10 * 365 * 86400.0  # older grpc versions report "none" as a far future


async def inject(faults: Faults, context: Context, default_deadline: float | None) -> None:
    """Apply the link faults to one call; returns when the call may go on to its handler.
    ``default_deadline``: the server's own for a call without a client deadline (None: none)."""
    delay, outcome = faults.decide_call()
    if delay:
        await faults.sleep(delay)
    if outcome is Outcome.PASS:
        return
    if outcome is Outcome.ERROR:
        raise faults.error()
    if outcome is Outcome.RESET:
        raise FaultInjected(f"connection reset (injected into {faults.service})")
    remaining: float | None = context.time_remaining()
    if remaining is not None and remaining >= _NO_DEADLINE:
        remaining = None
    if outcome is Outcome.HANG:
        await faults.sleep(remaining if remaining is not None else default_deadline or HOLD_BOUND)
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline exceeded: calls into {faults.service} hang (injected fault)",
        )
    await faults.sleep(HOLD_BOUND if remaining is None else max(remaining, HOLD_BOUND))  # blackhole
    raise FaultInjected(f"no answer (injected blackhole into {faults.service})")


__all__ = ["inject"]

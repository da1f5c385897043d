"""Resilience for synchronous calls between services, transport-free: the propagated deadline,
retries with a budget, a circuit breaker and a bulkhead per downstream, combined by a ``Guard``
that applies a downstream's ``Policy`` (data, from settings) in the shared clients."""

from ordermesh.resilience.breaker import CircuitBreaker, CircuitOpen, State, is_infrastructure_failure
from ordermesh.resilience.bulkhead import Bulkhead, BulkheadFull
from ordermesh.resilience.guard import Guard, Guards
from ordermesh.resilience.policy import DeadlineExceeded, Policy
from ordermesh.resilience.retry import (
    RetryBudget,
    RetryPolicy,
    call_with_retries,
    retry_after_blocking,
    retryable,
)

__all__ = [
    "Bulkhead",
    "BulkheadFull",
    "CircuitBreaker",
    "CircuitOpen",
    "DeadlineExceeded",
    "Guard",
    "Guards",
    "Policy",
    "RetryBudget",
    "RetryPolicy",
    "State",
    "call_with_retries",
    "is_infrastructure_failure",
    "retry_after_blocking",
    "retryable",
]

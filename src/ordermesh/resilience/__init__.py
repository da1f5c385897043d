"""Resilience for synchronous calls between services, transport-free: a circuit breaker and a
bulkhead per downstream, with an injectable clock. (Issue 12 applies them in the shared clients.)"""

from ordermesh.resilience.breaker import CircuitBreaker, CircuitOpen, State, is_infrastructure_failure
from ordermesh.resilience.bulkhead import Bulkhead, BulkheadFull

__all__ = ["Bulkhead", "BulkheadFull", "CircuitBreaker", "CircuitOpen", "State", "is_infrastructure_failure"]

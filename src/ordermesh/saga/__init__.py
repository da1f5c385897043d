"""Sagas: a distributed transaction as steps and compensations, with a durable log
(``store``), an engine that runs and resumes them (``runner``), and one record of what happened
whichever style ran it (``model``). Transport-free: steps are plain async callables."""

from ordermesh.saga.model import TERMINAL, SagaContext, SagaRecord, State, StepRecord, Style
from ordermesh.saga.runner import SagaDefinition, SagaPolicy, SagaRunner, Step, StepFailed
from ordermesh.saga.store import MemorySagaStore, SagaStore, SqlSagaStore

__all__ = [
    "TERMINAL",
    "MemorySagaStore",
    "SagaContext",
    "SagaDefinition",
    "SagaPolicy",
    "SagaRecord",
    "SagaRunner",
    "SagaStore",
    "SqlSagaStore",
    "State",
    "Step",
    "StepFailed",
    "StepRecord",
    "Style",
]

"""Schemathesis over the whole REST API, on a real socket, with every check and phase.

Examples, coverage (boundary and invalid values), fuzzing in positive and negative mode, and the
stateful phase (following the OpenAPI links from a created order) all run; any 5xx, any response
that breaks the schema, any undocumented status or content type fails the test.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.engine import Status, events, from_schema

from ordermesh.services.orders.openapi import openapi_document
from tests.helpers import running_api

# Bounded for a 2-core CI box: the whole run takes well under a minute.
MAX_EXAMPLES = 30
STATEFUL_MAX_STEPS = 6
SEED = 20240601


def _config(base_url: str, token: str) -> schemathesis.Config:
    generation = {
        "mode": "all",
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
    }
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},
            "output": {"sanitization": {"enabled": False}},
            "base-url": base_url,
            "auth": {"openapi": {"HTTPBearer": {"bearer": token}}},
            "generation": generation,
            "checks": {"enabled": True, "max_response_time": 10.0},
            "phases": {
                "examples": {"enabled": True, "fill-missing": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": STATEFUL_MAX_STEPS},
            },
            "request-timeout": 10.0,
        }
    )


def _run(base_url: str, token: str) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """Run every phase; return the failure reports, scenarios per phase and checks run per name."""
    schema = schemathesis.openapi.from_dict(openapi_document(), config=_config(base_url, token))
    failures: list[str] = []
    scenarios: dict[str, int] = {}
    checks: dict[str, int] = {}
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            scenarios[event.phase.value] = scenarios.get(event.phase.value, 0) + 1
            recorder = event.recorder
            for case_id, nodes in recorder.checks.items():
                for node in nodes:
                    checks[node.name] = checks.get(node.name, 0) + 1
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        interaction = recorder.interactions.get(case_id)
                        response = interaction.response if interaction is not None else None
                        answer = (
                            f"{response.status_code} {response.content[:500]!r}" if response else "no response"
                        )
                        failures.append(
                            f"[{event.phase.value}] {recorder.label} {node.name}: {failure.title}\n"
                            f"  {failure.message}\n  {node.failure_info.code_sample}\n  -> {answer}"
                        )
        elif isinstance(event, events.NonFatalError):
            failures.append(f"[{event.phase}] error in {event.label}: {event.info.title}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            failures.extend(f"[after run] {f.title}: {f.message}" for f in event.failures)
    return failures, scenarios, checks


async def test_the_api_survives_schemathesis(tmp_path: Path) -> None:
    async with running_api(f"sqlite:///{tmp_path}/st.db") as api:
        token = api.tokens.issue("alice")
        started = time.monotonic()
        failures, scenarios, checks = await asyncio.to_thread(_run, api.url, token)
        elapsed = time.monotonic() - started
    assert not failures, f"{len(failures)} Schemathesis failure(s):\n\n" + "\n\n".join(failures)
    print(f"schemathesis: {elapsed:.1f}s, scenarios {scenarios}, checks {checks}")
    assert {"examples", "coverage", "fuzzing", "stateful_testing"} <= set(scenarios), scenarios
    assert "not_a_server_error" in checks and "response_schema_conformance" in checks
    _ = Any

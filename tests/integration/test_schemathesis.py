"""Schemathesis over the whole REST API, on a real socket, with every check and every phase.

Examples, coverage (boundary and invalid values), fuzzing in positive and negative mode, and the
stateful phase (following the OpenAPI links from a created order) all run, as alice, with bob as
a peer who must never see alice's orders. Any 5xx, any response that breaks the schema, any
undocumented status, header or content type, any accepted invalid input fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import schemathesis
from schemathesis import Case, HookContext, Response
from schemathesis.core.failures import Failure
from schemathesis.engine import Status, events, from_schema
from schemathesis.openapi.checks import RejectedPositiveData

from ordermesh.services.orders.openapi import openapi_document
from tests.helpers import running_api

# Bounded for a 2-core CI box (about 20 s). A deeper, freshly random run for a bug hunt:
#   ORDERMESH_SCHEMATHESIS_EXAMPLES=500 ORDERMESH_SCHEMATHESIS_SEED=random \
#   pytest tests/integration/test_schemathesis.py
MAX_EXAMPLES = int(os.environ.get("ORDERMESH_SCHEMATHESIS_EXAMPLES", "60"))
_SEED = os.environ.get("ORDERMESH_SCHEMATHESIS_SEED", "20240601")
SEED = None if _SEED == "random" else int(_SEED)
STATEFUL_MAX_STEPS = 6
USERS = ("alice", "bob")

# Two schema-valid requests the contract refuses on purpose, as its 422 descriptions say:
# OpenAPI cannot express "not both of these query parameters", nor "a key used before".
DOCUMENTED_REFUSALS = (
    "https://ordermesh.dev/problems/idempotency-key-reused",
    "give either version or as_of, not both",
)


def _config(base_url: str, auth_file: Path) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            **({"seed": SEED} if SEED is not None else {}),
            "cache": {"enabled": False},
            "output": {"sanitization": {"enabled": False}},
            "base-url": base_url,
            "request-timeout": 10.0,
            "auth": {"wfc": {"path": str(auth_file), "user": USERS[0], "peers": list(USERS)}},
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": SEED is not None,
                "database": "none",
            },
            # Every built-in check; the response-time one needs a limit, a generous one here.
            "checks": {"enabled": True, "max_response_time": 10.0},
            "phases": {
                "examples": {"enabled": True, "fill-missing": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": STATEFUL_MAX_STEPS},
            },
        }
    )


def _documented_refusal(_: HookContext, failure: Failure, case: Case, response: Response) -> bool:
    """``filter_failure`` hook: keep every failure but positive data meeting those refusals."""
    if not isinstance(failure, RejectedPositiveData) or response.status_code != 422:
        return True
    text = response.content.decode("utf-8", "replace")
    return not any(marker in text for marker in DOCUMENTED_REFUSALS)


@dataclass
class Outcome:
    failures: list[str] = field(default_factory=list)
    scenarios: dict[str, int] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)

    def scenario(self, event: events.ScenarioFinished) -> None:
        self.scenarios[event.phase.value] = self.scenarios.get(event.phase.value, 0) + 1
        recorder = event.recorder
        for case_id, nodes in recorder.checks.items():
            for node in nodes:
                self.checks[node.name] = self.checks.get(node.name, 0) + 1
                if node.status != Status.FAILURE or node.failure_info is None:
                    continue
                failure = node.failure_info.failure
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction is not None else None
                answer = f"{response.status_code} {response.content[:500]!r}" if response else "no response"
                self.failures.append(
                    f"[{event.phase.value}] {recorder.label} {node.name}: {failure.title}\n"
                    f"  {failure.message}\n  {node.failure_info.code_sample}\n  -> {answer}"
                )


def run_schemathesis(base_url: str, auth_file: Path) -> Outcome:
    """Every phase against ``base_url`` (blocking: call it off the server's event loop)."""
    schema = schemathesis.openapi.from_dict(openapi_document(), config=_config(base_url, auth_file))
    schema.hook("filter_failure")(_documented_refusal)
    outcome = Outcome()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            outcome.scenario(event)
        elif isinstance(event, events.NonFatalError):
            outcome.failures.append(f"[{event.phase}] error in {event.label}: {event.info.message}")
        elif isinstance(event, events.FatalError):
            outcome.failures.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            outcome.failures.extend(f"[after the run] {f.title}: {f.message}" for f in event.failures)
    return outcome


def _auth_file(path: Path, tokens: dict[str, str]) -> Path:
    """A Web Fuzzing Commons auth document: one fixed bearer token per user."""
    entries = [
        {"name": user, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {token}"}]}
        for user, token in tokens.items()
    ]
    path.write_text(json.dumps({"auth": entries}), encoding="utf-8")
    return path


async def test_the_api_survives_schemathesis(tmp_path: Path) -> None:
    async with running_api(f"sqlite:///{tmp_path}/st.db") as api:
        auth_file = _auth_file(tmp_path / "auth.json", {u: api.tokens.issue(u) for u in USERS})
        started = time.monotonic()
        outcome = await asyncio.to_thread(run_schemathesis, api.url, auth_file)
        elapsed = time.monotonic() - started
    failures = outcome.failures
    assert not failures, f"{len(failures)} Schemathesis failure(s):\n\n" + "\n\n".join(failures)
    print(f"schemathesis: {elapsed:.1f}s, scenarios {outcome.scenarios}, checks {outcome.checks}")
    assert {"examples", "coverage", "fuzzing", "stateful"} <= set(outcome.scenarios), outcome.scenarios
    assert {"not_a_server_error", "response_schema_conformance", "negative_data_rejection"} <= set(
        outcome.checks
    ), outcome.checks

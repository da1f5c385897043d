"""Schemathesis over the shipping API, on a real socket (the kit's), with a service token: no
input, valid or not, gets a 5xx, a response outside the documented schemas, statuses, headers or
content types, or an invalid input accepted."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import schemathesis
from schemathesis.engine import Status, events, from_schema

from ordermesh.config import Settings
from ordermesh.kit.testing import running
from ordermesh.services.shipping.openapi import openapi_document
from ordermesh.services.shipping.spec import SPEC

MAX_EXAMPLES = int(os.environ.get("ORDERMESH_SCHEMATHESIS_EXAMPLES", "25"))
CALLERS = ("orders", "inventory")  # two services: the auth document wants a peer (it has no say here)
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
)


def _run(base_url: str, auth_file: Path) -> tuple[list[str], set[str], set[str]]:
    """The failures, the phases that ran and the checks that ran."""
    config = schemathesis.Config.from_dict(
        {
            "seed": 20240601,
            "cache": {"enabled": False},
            "base-url": base_url,
            "request-timeout": 10.0,
            "auth": {"wfc": {"path": str(auth_file), "user": "orders", "peers": list(CALLERS)}},
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "phases": {
                "examples": {"enabled": True, "fill-missing": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": 6},
            },
        }
    )
    failures: list[str] = []
    phases: set[str] = set()
    checks: set[str] = set()
    for event in from_schema(schemathesis.openapi.from_dict(openapi_document(), config=config)).execute():
        if isinstance(event, events.ScenarioFinished):
            phases.add(event.phase.value)
            for case_id, nodes in event.recorder.checks.items():
                for node in nodes:
                    checks.add(node.name)
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        interaction = event.recorder.interactions.get(case_id)
                        answer = interaction.response if interaction is not None else None
                        got = f"{answer.status_code} {answer.content[:300]!r}" if answer else "no response"
                        failures.append(
                            f"{node.name}: {node.failure_info.failure.title}\n"
                            f"  {node.failure_info.code_sample}\n  -> {got}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"error: {event}")
    return failures, phases, checks


async def test_the_shipping_api_survives_schemathesis(tmp_path: Path) -> None:
    settings = Settings(
        shipping_database_url=f"sqlite:///{tmp_path}/shipping.db", broker_url="memory://", data_dir=tmp_path
    )
    async with running(SPEC, settings) as rt:
        auth = tmp_path / "auth.json"
        entries = [
            {
                "name": who,
                "fixedHeaders": [
                    {"name": "Authorization", "value": f"Bearer {rt.tokens.issue_service(who)}"}
                ],
            }
            for who in CALLERS
        ]
        auth.write_text(json.dumps({"auth": entries}), encoding="utf-8")
        failures, phases, checks = await asyncio.to_thread(_run, rt.http_url, auth)
    assert not failures, f"{len(failures)} failure(s):\n\n" + "\n\n".join(failures[:20])
    assert phases == {"examples", "coverage", "fuzzing", "stateful"}, phases
    assert checks == set(CHECKS), checks

"""Payment input rules, the simulated provider, ids, and the client's import weight."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from ordermesh.config import Settings
from ordermesh.contracts import payments as contract
from ordermesh.errors import InfrastructureError, ValidationError
from ordermesh.services.payments.domain import check_charge, check_refund, payment_id_for
from ordermesh.services.payments.provider import SimulatedProvider


@pytest.mark.parametrize(
    ("order_id", "amount", "currency", "fields"),
    [
        ("", 0, "", {"order_id", "amount", "currency"}),
        ("o-1", -1, "EUR", {"amount"}),
        ("o-1", 2**63, "EUR", {"amount"}),
        ("o-1", 1, "eur", {"currency"}),
        ("o-1", 1, "EURO", {"currency"}),
        ("o-1", 1, "E1R", {"currency"}),
        (" o-1", 1, "EUR", {"order_id"}),
        ("o\n1", 1, "EUR", {"order_id"}),
        ("o" * 129, 1, "EUR", {"order_id"}),
    ],
)
def test_bad_charges_name_every_bad_field(
    order_id: str, amount: int, currency: str, fields: set[str]
) -> None:
    with pytest.raises(ValidationError) as bad:
        check_charge(order_id, amount, currency)
    assert {v.field for v in bad.value.violations} == fields


def test_good_input_passes() -> None:
    check_charge("0190f7c2-7a55-7c1e-9b2d-1f3a2b4c5d6e", 1, "JPY")
    check_charge("o" * 128, 2**63 - 1, "EUR")
    check_refund("o-1", "")
    check_refund("o-1", "r" * 500)
    with pytest.raises(ValidationError) as long_reason:
        check_refund("o-1", "r" * 501)
    assert [v.field for v in long_reason.value.violations] == ["reason"]


def test_ids_are_deterministic_per_order_and_event() -> None:
    assert payment_id_for("o-1") == payment_id_for("o-1") != payment_id_for("o-2")
    ids = {contract.message_id(key, order) for key in contract.ROUTING_KEYS for order in ("o-1", "o-2")}
    assert len(ids) == 6
    assert contract.message_id(contract.PAYMENT_FAILED, "o-1") == contract.message_id("payment.failed", "o-1")


async def test_the_simulated_provider_declines_above_its_limit_and_waits_through_its_sleeper() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = Settings(payment_limit=1000, payment_latency=1.5, payment_error_rate=0.0)
    provider = SimulatedProvider.from_settings(settings, sleep=sleep)
    assert (await provider.charge("p", 1000, "EUR")).approved
    declined = await provider.charge("p", 1001, "EUR")
    assert not declined.approved and "1001 EUR is above the limit 1000" in declined.reason
    await provider.refund("p", 1000, "EUR")
    assert slept == [1.5, 1.5, 1.5]


async def test_the_simulated_provider_fails_at_its_error_rate_reproducibly() -> None:
    async def outcomes(seed: int) -> list[bool]:
        provider = SimulatedProvider(10_000, error_rate=0.3, rng=random.Random(seed))
        failed = []
        for _ in range(1000):
            try:
                await provider.charge("p", 1, "EUR")
                failed.append(False)
            except InfrastructureError:
                failed.append(True)
        return failed

    first = await outcomes(7)
    assert first == await outcomes(7)  # seeded: the same calls fail every run
    assert 250 <= sum(first) <= 350
    never = SimulatedProvider(10, error_rate=0.0)
    always = SimulatedProvider(10, error_rate=1.0)
    assert (await never.charge("p", 1, "EUR")).approved
    with pytest.raises(InfrastructureError):
        await always.charge("p", 1, "EUR")
    with pytest.raises(ValueError):
        SimulatedProvider(10, error_rate=1.5)


def test_the_payments_client_and_its_imports_load_no_fastapi() -> None:
    # ``ordermesh.client``'s __init__ loads the REST client (and fastapi through it); the payments
    # client module itself must not, so it is imported here with that package stubbed.
    code = (
        "import sys, types, ordermesh\n"
        "pkg = types.ModuleType('ordermesh.client'); pkg.__path__ = [ordermesh.__path__[0] + '/client']\n"
        "sys.modules['ordermesh.client'] = pkg\n"
        "import ordermesh.client.payments\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'fastapi', 'starlette', 'uvicorn'}"
        " or m.startswith('ordermesh.services'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

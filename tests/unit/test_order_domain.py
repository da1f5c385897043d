"""The order aggregate's rules, without storage."""

from __future__ import annotations

import pytest

from ordermesh.clock import FakeClock
from ordermesh.errors import DomainError, ValidationError
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderCreated, OrderLine

NOW = FakeClock().now()


def new_order(**over: object) -> OrderAggregate:
    args: dict[str, object] = {
        "order_id": "o-1",
        "user_id": "u-1",
        "user_email": "ada@example.com",
        "currency": "EUR",
        "items": [OrderLine("SKU-1", 2, 500), OrderLine("SKU-2", 1, 250)],
        "now": NOW,
    }
    args.update(over)
    return OrderAggregate.create(**args)  # type: ignore[arg-type]


def test_create_computes_the_total_and_records_one_event() -> None:
    order = new_order()
    assert order.total == 1250 and order.status == "pending" and order.version == 1
    ((event, at),) = order.pending()
    assert isinstance(event, OrderCreated) and event.total == 1250 and at == NOW


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [OrderLine("A", 0, 100)]}, "items[0].quantity"),
        ({"items": [OrderLine("A", -1, 100)]}, "items[0].quantity"),
        ({"items": [OrderLine("A", 1, 0)]}, "items[0].unit_price"),
        ({"items": [OrderLine("A", 1, -100)]}, "items[0].unit_price"),
        ({"items": [OrderLine("", 1, 100)]}, "items[0].sku"),
        ({"currency": "eur"}, "currency"),
        ({"user_email": "nobody"}, "user_email"),
        ({"user_email": "a@example.com\n"}, "user_email"),
        ({"user_id": ""}, "user_id"),
    ],
)
def test_invalid_orders_are_refused_naming_the_field(over: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        new_order(**over)
    assert field in [v.field for v in err.value.violations]


def test_the_happy_path_walks_every_status() -> None:
    order = new_order()
    order.record_payment("pay-1", 1250, "EUR", NOW)
    assert order.status == "paid"
    order.reserve_stock("res-1", NOW)
    assert order.status == "stock_reserved"
    order.ship("TRACK-1", NOW)
    assert (order.status, order.tracking_id, order.version) == ("shipped", "TRACK-1", 4)


def test_no_paying_twice_nor_a_wrong_amount_or_currency() -> None:
    order = new_order()
    with pytest.raises(DomainError, match="does not match the order total"):
        order.record_payment("pay-1", 1, "EUR", NOW)
    with pytest.raises(DomainError, match="currency"):
        order.record_payment("pay-1", 1250, "USD", NOW)
    order.record_payment("pay-1", 1250, "EUR", NOW)
    with pytest.raises(DomainError, match="already paid"):
        order.record_payment("pay-2", 1250, "EUR", NOW)


def test_no_shipping_unpaid_or_cancelled_orders() -> None:
    order = new_order()
    with pytest.raises(DomainError, match="not paid"):
        order.ship("T", NOW)
    order.cancel("customer asked", NOW)
    with pytest.raises(DomainError, match="cancelled"):
        order.ship("T", NOW)


def test_terminal_states_stay_terminal() -> None:
    order = new_order()
    order.cancel("customer asked", NOW)
    with pytest.raises(DomainError, match="already cancelled"):
        order.cancel("again", NOW)
    with pytest.raises(DomainError):
        order.record_payment("p", 1250, "EUR", NOW)


def test_compensations_refund_release_then_cancel() -> None:
    order = new_order()
    with pytest.raises(DomainError, match="no payment"):
        order.refund(NOW)
    order.record_payment("pay-1", 1250, "EUR", NOW)
    order.reserve_stock("res-1", NOW)
    order.refund(NOW)
    with pytest.raises(DomainError, match="already refunded"):
        order.refund(NOW)
    order.release_stock(NOW)
    with pytest.raises(DomainError, match="no stock reservation"):
        order.release_stock(NOW)
    order.cancel("stock ran out", NOW)
    assert (order.status, order.refunded_amount, order.stock_released) == ("cancelled", 1250, True)


def test_failures_are_recorded_without_moving_the_status() -> None:
    order = new_order()
    order.record_payment_failure("card declined", NOW)
    assert (order.status, order.failure_reason) == ("pending", "card declined")
    with pytest.raises(DomainError):
        order.record_reservation_failure("none left", NOW)


def test_snapshot_round_trips_every_field() -> None:
    order = new_order()
    order.record_payment("pay-1", 1250, "EUR", NOW)
    order.reserve_stock("res-1", NOW)
    copy = OrderAggregate.from_snapshot(order.to_snapshot())
    assert copy.to_snapshot() == order.to_snapshot()
    assert copy.items == order.items and copy.created_at == NOW

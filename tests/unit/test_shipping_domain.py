"""Shipping rules without a database: validation lists every bad field, items compare per SKU,
and tracking ids look like tracking ids."""

from __future__ import annotations

import re

import pytest

from ordermesh.errors import DomainError, ValidationError
from ordermesh.services.shipping.domain import (
    TRACKING_PATTERN,
    Address,
    Item,
    Shipment,
    check_repeat,
    new_tracking_id,
    shipment_request,
)

HOME = Address("Ada Lovelace", "12 St James's Square", "London", "SW1Y 4JH", "GB")


def test_items_are_merged_per_sku_and_sorted() -> None:
    request = shipment_request("o-1", [Item("B", 1), Item("A", 2), Item("B", 3)])
    assert request.items == (Item("A", 2), Item("B", 4))


def test_every_offending_field_is_named() -> None:
    with pytest.raises(ValidationError) as caught:
        shipment_request(
            "bad id",
            [Item("", 1), Item("SKU-1", 0), Item("SKU-2", 10_001), Item("SKU-3", True)],
            Address("", "x", "y", "z" * 21, "gb", line2="a\x00b"),
        )
    fields = [v.field for v in caught.value.violations]
    assert fields == [
        "order_id",
        "items[0].sku",
        "items[1].quantity",
        "items[2].quantity",
        "items[3].quantity",
        "address.name",
        "address.postal_code",
        "address.line2",
        "address.country",
    ]


@pytest.mark.parametrize("text", ["nul\x00", "tab\there", "lone \ud800 surrogate", "   "])
def test_address_text_refuses_what_a_label_or_database_cannot_hold(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        shipment_request("o-1", [Item("A", 1)], Address(text, "line", "city", "1000", "DE"))
    assert [v.field for v in caught.value.violations] == ["address.name"]


def test_no_items_and_too_many_items_are_refused() -> None:
    with pytest.raises(ValidationError, match="at least one item"):
        shipment_request("o-1", [])
    with pytest.raises(ValidationError, match="at most 100"):
        shipment_request("o-1", [Item(f"S{i}", 1) for i in range(101)])


def _shipment(status: str = "scheduled", address: Address | None = HOME) -> Shipment:
    return Shipment("s", "o-1", "OMAAAAAAAAAAAA", status, (Item("A", 2),), address, None, None)  # type: ignore[arg-type]


def test_a_repeat_must_ask_for_the_same_shipment() -> None:
    check_repeat(_shipment(), shipment_request("o-1", [Item("A", 1), Item("A", 1)], HOME))  # same, split
    with pytest.raises(DomainError, match="already has a shipment with other items"):
        check_repeat(_shipment(), shipment_request("o-1", [Item("A", 3)], HOME))
    with pytest.raises(DomainError, match="to another address"):
        check_repeat(_shipment(), shipment_request("o-1", [Item("A", 2)]))
    with pytest.raises(DomainError, match="cancelled"):
        check_repeat(_shipment("cancelled"), shipment_request("o-1", [Item("A", 2)], HOME))


def test_tracking_ids_are_om_and_12_base32_characters_and_do_not_repeat() -> None:
    ids = {new_tracking_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(re.fullmatch(TRACKING_PATTERN, i) for i in ids)

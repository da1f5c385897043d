"""Event ids are UUIDv7: unique, and ordered by the millisecond they were made in."""

from __future__ import annotations

import uuid

from ordermesh.eventstore.model import NewEvent, new_event_id


def test_event_ids_are_unique_version_7_uuids() -> None:
    ids = [NewEvent("OrderCreated", {}).event_id for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}


def test_event_ids_carry_the_time_they_were_made() -> None:
    first, second = uuid.UUID(new_event_id()), uuid.UUID(new_event_id())
    # The top 48 bits are Unix milliseconds: a later id never has an earlier timestamp.
    assert first.int >> 80 <= second.int >> 80

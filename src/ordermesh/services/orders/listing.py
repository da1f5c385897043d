"""Pages of a user's orders, newest first, read from the ``user_orders`` index.

A page is one range read of ``limit + 1`` rows (the extra row only says whether there is a next
page), and its body is the rows' stored JSON joined as they are: the cost of a page depends on
its size, not on how many orders the user has.

The cursor names the first-event position of the page's last order, 8 bytes in unpadded
base64url (11 characters). The next page holds the orders with a smaller position, so an order
created during a walk (a greater position) never shifts what the rest of the walk returns. Every
string of the documented shape is a valid cursor, as the OpenAPI pattern promises.
"""

from __future__ import annotations

import base64
import binascii
import re

from ordermesh.errors import FieldViolation, ValidationError
from ordermesh.readmodel.port import DocStore
from ordermesh.services.orders.projections import USER_ORDERS, row_key, row_position, user_prefix

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{11}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(position.to_bytes(8, "big")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, field: str = "after") -> int:
    """The position a cursor names; a ``ValidationError`` on ``field`` when it is no cursor."""
    if _CURSOR.fullmatch(cursor):
        try:
            return int.from_bytes(base64.urlsafe_b64decode(cursor + "="), "big")
        except (binascii.Error, ValueError):
            pass
    why = "is not a cursor from a previous page (11 characters of A-Z a-z 0-9 _ -)"
    raise ValidationError(f"{field}: {why}", [FieldViolation(field, why)])


def check_limit(limit: int, field: str = "limit") -> None:
    if not 1 <= limit <= MAX_LIMIT:
        why = f"must be from 1 to {MAX_LIMIT}"
        raise ValidationError(f"{field}: {why}", [FieldViolation(field, why)])


async def user_orders_page(docs: DocStore, user_id: str, limit: int, after: str | None) -> bytes:
    """The JSON body ``{"orders": [...], "next": CURSOR|null}`` of one page."""
    check_limit(limit)
    prefix = user_prefix(user_id)
    start = row_key(user_id, decode_cursor(after)) if after is not None else None
    rows = await docs.scan(USER_ORDERS, prefix, start, limit + 1)
    orders = b",".join(body for _, body in rows[:limit])
    if len(rows) <= limit:
        return b'{"orders":[' + orders + b'],"next":null}'
    cursor = encode_cursor(row_position(rows[limit - 1][0])).encode("ascii")
    return b'{"orders":[' + orders + b'],"next":"' + cursor + b'"}'

"""``ordermesh demo``: a mix of orders against the running system, followed live, then a summary.

Most orders should ship; some are priced over the payment limit (declined) and some ask for more
units than the warehouse holds (out of stock). Everything goes through the public APIs: REST to
place orders and read each order's saga view (whichever saga style runs it), and
``StreamOrderUpdates`` for prompt status changes; the REST poll is also the fallback when the
stream is not there.

The package: ``rows`` (the order mix, a row per order, its outcome), ``render`` (the live table),
``live`` (the ``Demo`` session that places and follows the orders), ``summary`` and ``driver``
(``run_demo``, the command's entry point).
"""

from ordermesh.demo.driver import run_demo
from ordermesh.demo.live import POLL_EVERY as POLL_EVERY
from ordermesh.demo.live import Demo as Demo
from ordermesh.demo.render import SHOWN_ROWS as SHOWN_ROWS
from ordermesh.demo.render import breakers_line
from ordermesh.demo.rows import ORDERS_PER_USER as ORDERS_PER_USER
from ordermesh.demo.rows import OUT_OF_STOCK_UNITS as OUT_OF_STOCK_UNITS
from ordermesh.demo.rows import OUTCOMES, Row, current_step, plan
from ordermesh.demo.rows import TERMINAL as TERMINAL
from ordermesh.demo.summary import summarize

# The `X as X` names were module attributes when this was one module and stay reachable here;
# `__all__` is what it was.
__all__ = ["OUTCOMES", "Row", "breakers_line", "current_step", "plan", "run_demo", "summarize"]

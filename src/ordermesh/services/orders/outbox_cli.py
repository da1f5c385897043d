"""``ordermesh outbox status|replay``: how far the order service's outbox relay has published, and the
messages it parked because no queue was bound for them (the service's own database)."""

from __future__ import annotations

import typer
from rich.table import Table

from ordermesh.kit.console import JsonFlag, console, open_configured_broker, print_json
from ordermesh.services.orders.cli import run_on_orders
from ordermesh.services.orders.runtime import OrderSystem

app = typer.Typer(help="The order service's outbox relay.", no_args_is_help=True)


@app.command("status")
def outbox_status(as_json: JsonFlag = False) -> None:
    """How far the order events have been published to the broker, and what is parked."""
    from ordermesh.messaging.relay import Parked, ParkingLot
    from ordermesh.services.orders.outbox import RELAY_NAME
    from ordermesh.services.orders.spec import relay_checkpoints

    async def work(system: OrderSystem) -> tuple[int, int, list[Parked]]:
        checkpoints = await relay_checkpoints(system)
        parked = await (await ParkingLot.open(system.db)).all()
        return await checkpoints.load(RELAY_NAME), await system.store.head_position(), parked

    position, head, parked = run_on_orders(work)
    if as_json:
        print_json(
            {
                "relay": RELAY_NAME,
                "position": position,
                "head": head,
                "pending": head - position,
                "parked": [
                    {
                        "message_id": p.message.message_id,
                        "routing_key": p.message.routing_key,
                        "reason": p.reason,
                    }
                    for p in parked
                ],
            }
        )
        return
    console.print(
        f"relay {RELAY_NAME}: published up to position {position} of {head} ({head - position} pending)"
    )
    if not parked:
        console.print("parked messages: none")
        return
    table = Table(title=f"parked messages ({len(parked)}): no queue was bound for their routing key")
    table.add_column("message id", overflow="fold", min_width=36)
    for column in ("routing key", "type", "reason"):
        table.add_column(column, overflow="fold")
    for p in parked:
        table.add_row(p.message.message_id, p.message.routing_key, p.message.type, p.reason)
    console.print(table)
    console.print(
        "start the consumer that subscribes to these routing keys, then run `ordermesh outbox replay` "
        "(a running `ordermesh up` also retries them every few seconds)"
    )


@app.command("replay")
def outbox_replay() -> None:
    """Publish the parked messages again; exit 1 if some still reach no queue."""
    from ordermesh.messaging.relay import ParkingLot
    from ordermesh.services.orders.outbox import EXCHANGE
    from ordermesh.services.orders.spec import relay_for

    async def work(system: OrderSystem) -> tuple[int, int]:
        if not await (await ParkingLot.open(system.db)).all():
            return 0, 0  # nothing to send: no reason to require a reachable broker
        broker = await open_configured_broker()
        try:
            relay = await relay_for(system, broker)  # the service's own relay, so its rules
            # As the relay does before it publishes: a missing exchange would make every message
            # unroutable, whatever is bound.
            await broker.declare_exchange(EXCHANGE)
            return await relay.replay_parked()
        finally:
            await broker.close()

    replayed, still_parked = run_on_orders(work)
    console.print(f"replayed {replayed}, still parked {still_parked}")
    if still_parked:
        console.print(
            "[yellow]no queue is bound yet for the routing keys of the rest:[/yellow] start their consumer, "
            "then replay again (`ordermesh outbox status` lists them)"
        )
        raise typer.Exit(1)


__all__ = ["app"]

"""``ordermesh dlq list|show|replay``: dead letters on the configured broker (embedded or RabbitMQ),
with the reason each one died, and sending them back to the queue they died in. With no queue
named, every queue a service of the catalog consumes (``catalog.consumer_queues``): a composition
root beside ``cli``, since the kit below cannot see the services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from ordermesh import catalog
from ordermesh.errors import NotFound
from ordermesh.kit.console import JsonFlag, console, fail, open_configured_broker, print_json, run

if TYPE_CHECKING:
    from ordermesh.messaging.port import Broker, DeadLetter

app = typer.Typer(help="Inspect and replay dead letters.", no_args_is_help=True)
T = TypeVar("T")


def _with_broker(work: Callable[[Broker], Awaitable[T]]) -> T:
    """Open the configured broker, run ``work``, close; errors mapped as ``kit.console.run`` maps them."""

    async def main() -> T:
        broker = await open_configured_broker()
        try:
            return await work(broker)
        finally:
            await broker.close()

    return run(main())


async def _letters(broker: Broker, queue: str | None) -> list[DeadLetter]:
    letters: list[DeadLetter] = []
    for name in [queue] if queue else catalog.consumer_queues():
        letters += await broker.dead_letters(name)
    return letters


@app.command("list")
def dlq_list(
    queue: Annotated[str | None, typer.Argument(help="a consumer queue (default: all known)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List dead letters with their reason."""
    letters = _with_broker(lambda broker: _letters(broker, queue))
    if as_json:
        print_json([_letter_json(d) for d in letters])
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for column in ("id", "queue", "routing key", "attempts", "error"):
        table.add_column(column, overflow="fold")
    for d in letters:
        table.add_row(d.id, d.queue, d.original_routing_key, str(d.attempts), d.error)
    console.print(table)


def _letter_json(d: DeadLetter) -> dict[str, Any]:
    m = d.message
    return {
        "id": d.id,
        "queue": d.queue,
        "error": d.error,
        "attempts": d.attempts,
        "original_exchange": d.original_exchange,
        "original_routing_key": d.original_routing_key,
        "type": m.type,
        "schema_version": m.schema_version,
        "occurred_at": m.occurred_at.isoformat(),
        "correlation_id": m.correlation_id,
        "headers": dict(m.headers),
        "body": m.body.decode(errors="replace"),
    }


@app.command("show")
def dlq_show(message_id: str, as_json: JsonFlag = False) -> None:
    """Show one dead letter: envelope, headers, body."""
    found = [d for d in _with_broker(lambda broker: _letters(broker, None)) if d.id == message_id]
    if not found:
        fail(NotFound(f"no dead letter {message_id}"))
    d = found[0]
    if as_json:
        print_json(_letter_json(d))
        return
    m = d.message
    console.print(f"id            {d.id}\nqueue         {d.queue}\nerror         {d.error}")
    console.print(
        f"attempts      {d.attempts}\noriginal      {d.original_exchange} / {d.original_routing_key}"
    )
    console.print(
        f"type          {m.type} (schema v{m.schema_version})\noccurred at   {m.occurred_at.isoformat()}"
    )
    console.print(f"correlation   {m.correlation_id}\nheaders       {dict(m.headers)}")
    console.print(m.body.decode(errors="replace"), soft_wrap=True)


@app.command("replay")
def dlq_replay(
    message_id: Annotated[str | None, typer.Argument(help="the dead letter's id")] = None,
    all_: Annotated[bool, typer.Option("--all", help="replay every dead letter")] = False,
    queue: Annotated[str | None, typer.Option(help="only this queue")] = None,
) -> None:
    """Send dead letters back to the queue they died in."""
    if (message_id is None) == (not all_):
        raise typer.BadParameter("give a message id or --all")

    async def work(broker: Broker) -> int:
        letters = [d for d in await _letters(broker, queue) if all_ or d.id == message_id]
        for d in letters:
            await broker.replay(d.queue, d.id)
        return len(letters)

    count = _with_broker(work)
    if count == 0 and all_:
        console.print("no dead letters: nothing to replay")
        return
    if count == 0:
        fail(NotFound(f"no dead letter {message_id} to replay"))
    console.print(f"replayed {count} dead letter(s)")


__all__ = ["app"]

"""``ordermesh mail list``: the mails the embedded mail sink caught (``DATA_DIR/mail.jsonl``), with
the trace each one belongs to."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ordermesh.kit.console import console
from ordermesh.kit.console import settings as console_settings

app = typer.Typer(help="The embedded mail sink.", no_args_is_help=True)


@app.command("list")
def mail_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per line and mail, with its trace_id, for scripts")
    ] = False,
) -> None:
    """Show the mails the embedded sink caught, with the trace each one belongs to."""
    import json

    from ordermesh import tracing
    from ordermesh.services.notifications.sink import list_mail

    settings = console_settings()
    mails = list_mail(settings.data_dir / "mail.jsonl")
    if as_json:
        for m in mails:
            # print, not the rich console: no markup, highlighting or wrapping in machine output.
            print(json.dumps({**m.to_json(), "trace_id": tracing.trace_id(m.traceparent)}))
        return
    table = Table(title=f"mail ({len(mails)})")
    for column in ("received", "to", "subject", "message id", "trace"):
        table.add_column(column, overflow="fold")
    for m in mails:
        trace = tracing.trace_id(m.traceparent) or "-"
        table.add_row(m.received_at, ", ".join(m.rcpt_tos), m.subject, m.message_id, trace)
    console.print(table)


__all__ = ["app"]

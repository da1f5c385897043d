"""``ordermesh up``: the whole system in one foreground process with embedded defaults."""

from __future__ import annotations

import uvicorn
from rich.console import Console

from ordermesh.config import Settings
from ordermesh.http.auth import Tokens
from ordermesh.services.orders.app import create_order_app


def run_system(settings: Settings, host: str | None, port: int | None, console: Console) -> None:
    host = host or settings.http_host
    port = port or settings.http_port
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_order_app(settings)
    token = Tokens(settings).issue("dev-user")
    console.rule("[bold]ordermesh")
    console.print(f"database      {settings.effective_database_url}")
    console.print(f"REST API      http://{host}:{port}/api   (docs: http://{host}:{port}/docs)")
    console.print(f"health        http://{host}:{port}/readyz   metrics: http://{host}:{port}/metrics")
    if settings.uses_dev_secret:
        console.print(
            "[yellow]JWT secret    the development default: set ORDERMESH_JWT_SECRET in production[/yellow]"
        )
    console.print("dev token     for user 'dev-user' (more: `ordermesh token USER_ID`):")
    console.print(f"export ORDERMESH_TOKEN={token}", soft_wrap=True)
    console.print(
        f'try           curl -H "Authorization: Bearer $ORDERMESH_TOKEN" '
        f"http://{host}:{port}/api/users/dev-user/orders",
        soft_wrap=True,
    )
    console.print("Ctrl-C stops.")
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)

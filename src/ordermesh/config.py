"""Settings from the environment; every name here is public contract."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEV_JWT_SECRET = "ordermesh-development-secret-change-me"


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: Path(".ordermesh"))
    database_url: str = ""
    jwt_secret: str = DEV_JWT_SECRET
    jwt_issuer: str = "ordermesh"
    jwt_audience: str = "ordermesh-api"
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 50051
    snapshot_every: int = 100
    broker_url: str = ""
    smtp_url: str = ""
    mail_sink_port: int = 8025
    notifications_http_port: int = 8001  # 0: the notification service serves no HTTP

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'orders.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        """``amqp://…`` for RabbitMQ; unset: the embedded broker, a SQLite file in the data dir."""
        return self.broker_url or f"sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def effective_smtp_url(self) -> str:
        """Unset: the embedded mail sink that `ordermesh up` starts."""
        return self.smtp_url or f"smtp://127.0.0.1:{self.mail_sink_port}"

    @property
    def uses_dev_secret(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        return cls(
            data_dir=Path(e.get("ORDERMESH_DATA_DIR", ".ordermesh")),
            database_url=e.get("ORDERMESH_DATABASE_URL", ""),
            jwt_secret=e.get("ORDERMESH_JWT_SECRET") or DEV_JWT_SECRET,
            http_host=e.get("ORDERMESH_HTTP_HOST", "127.0.0.1"),
            http_port=int(e.get("ORDERMESH_HTTP_PORT", "8000")),
            grpc_port=int(e.get("ORDERMESH_GRPC_PORT", "50051")),
            snapshot_every=int(e.get("ORDERMESH_SNAPSHOT_EVERY", "100")),
            broker_url=e.get("ORDERMESH_BROKER_URL", ""),
            smtp_url=e.get("ORDERMESH_SMTP_URL", ""),
            mail_sink_port=int(e.get("ORDERMESH_MAIL_SINK_PORT", "8025")),
            notifications_http_port=int(e.get("ORDERMESH_NOTIFICATIONS_HTTP_PORT", "8001")),
        )

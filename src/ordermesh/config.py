"""Settings from the environment: one model, every ``ORDERMESH_*`` variable; each name is public
contract.

Every service process, the supervisor and the CLI read the same :class:`Settings`. A bad value
fails at start with one line naming the variable and what it expects (:func:`load`), and the
README's settings table is generated from the field descriptions (:func:`markdown_table`; a
test fails when the README drifts from it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ordermesh.errors import ConfigError

DEV_JWT_SECRET = "ordermesh-development-secret-change-me"
ENV_PREFIX = "ORDERMESH_"
# The settings a downstream's policy may override (``Settings.policy``).
POLICY_FIELDS = (
    "call_timeout",
    "retry_attempts",
    "retry_budget",
    "breaker_failures",
    "breaker_failure_rate",
    "breaker_window",
    "breaker_open_seconds",
    "bulkhead_limit",
)

Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port (the log line says which)
ServiceName = Literal["orders", "payments", "inventory", "shipping", "notifications"]
SERVICES: tuple[ServiceName, ...] = ("orders", "payments", "inventory", "shipping", "notifications")


class Settings(BaseSettings):
    """What a deployment sets. Field docs become the README table (``markdown_table``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", validate_default=True, populate_by_name=True
    )

    data_dir: Path = Field(Path(".ordermesh"), description="where embedded data lives (SQLite files, mail)")
    database_url: str = Field(
        "",
        description="`postgresql://…` puts every service in its own schema of that database "
        "(`orders`, `payments`, …; with `?search_path=P`: `P_orders`, …); unset: a SQLite file "
        "per service in the data dir",
    )
    orders_database_url: str = Field("", description="the order service's own database (overrides the above)")
    payments_database_url: str = Field("", description="the payment service's own database")
    inventory_database_url: str = Field("", description="the inventory service's own database")
    shipping_database_url: str = Field("", description="the shipping service's own database")
    notifications_database_url: str = Field("", description="the notification service's inbox database")
    broker_url: str = Field(
        "",
        description="`amqp://…` selects RabbitMQ (`?prefix=`, `?quorum=1`, `&delivery_limit=20`); "
        "unset: the embedded broker (a SQLite file in the data dir; `?delivery_limit=20`)",
    )
    rabbitmq_fast_path: bool = Field(
        True,
        description="RabbitMQ's hand-written frame reader, delivery tap and publish pipeline (~2.5x "
        "aiormq's own path), used on the aiormq and pamqp versions it was verified on (others: "
        "aiormq's stock path and one warning); `false`: always the stock path. `?fast_path=0` (or "
        "`=1`) on the broker URL wins",
    )
    jwt_secret: str = Field(
        DEV_JWT_SECRET,
        description="HS256 signing secret (unset: a development default that `make up` announces)",
    )
    jwt_issuer: str = Field("ordermesh", description="`iss` of issued tokens, checked on every call")
    jwt_audience: str = Field("ordermesh-api", description="`aud` of issued tokens, checked on every call")
    jwt_max_ttl_hours: float = Field(
        24.0, gt=0, description="the longest lifetime a token may have; longer-lived tokens are refused"
    )
    http_host: str = Field(
        "127.0.0.1", description="the interface every listener binds (`0.0.0.0` in a container)"
    )
    http_port: Port = Field(8000, description="the order service's REST API")
    grpc_port: Port = Field(50051, description="the order service's gRPC API")
    notifications_http_port: Port = Field(
        8001, description="the notification service's `/livez`, `/readyz`, `/metrics`"
    )
    payments_http_port: Port = Field(
        8002, description="the payment service's `/livez`, `/readyz`, `/metrics`"
    )
    payments_grpc_port: Port = Field(50052, description="the payment service's gRPC API")
    shipping_http_port: Port = Field(8003, description="the shipping service's REST API")
    inventory_http_port: Port = Field(
        8004, description="the inventory service's `/livez`, `/readyz`, `/metrics`"
    )
    inventory_grpc_port: Port = Field(50053, description="the inventory service's gRPC API")
    snapshot_every: int = Field(100, ge=1, description="events between order snapshots")
    saga: Literal["orchestrated", "choreographed"] = Field(
        "orchestrated",
        description="how orders are fulfilled: a saga manager in the order service calling the others "
        "(`orchestrated`), or the services reacting to each other's events (`choreographed`)",
    )
    saga_step_timeout: float = Field(
        5.0, gt=0, description="seconds one saga step may take before it is retried"
    )
    saga_deadline: float = Field(
        60.0, gt=0, description="seconds a saga may take in all; past it, it compensates what it did"
    )
    payments_target: str = Field(
        "",
        description="where the order service calls payments (`host:port`; unset: this host's)",
    )
    inventory_target: str = Field(
        "",
        description="where the order service calls inventory (`host:port`; unset: this host's)",
    )
    shipping_url: str = Field(
        "", description="where the order service calls shipping (`http://host:port`; unset: this host's)"
    )
    smtp_url: str = Field(
        "", description="`smtp://host:port`; unset: the embedded mail sink that `make up` starts"
    )
    mail_sink_port: Port = Field(8025, description="the embedded mail sink's SMTP port")
    mail_from: str = Field(
        "ordermesh <orders@ordermesh.local>", description="sender of the notification mails"
    )
    payment_limit: int = Field(
        100000, ge=0, description="the simulated provider declines payments above this (minor units)"
    )
    payment_latency: float = Field(0.0, ge=0, description="the simulated provider's latency, in seconds")
    payment_error_rate: float = Field(
        0.0, ge=0, le=1, description="the share of calls the simulated provider fails (0 to 1)"
    )
    max_body_bytes: int = Field(
        1048576,
        ge=1,
        description="the largest HTTP request body taken, in bytes; a larger one is answered 413 "
        "before it is read (or as soon as a chunked one passes it), before authentication",
    )
    http_body_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds a client has to send a whole request body once its headers arrived; "
        "a body still trickling in then is answered 408 and the connection closed",
    )
    http_header_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a client has to send a request's headers (from connecting, or from the "
        "previous response on a kept-alive connection); then the connection is closed",
    )
    write_rate: float = Field(
        20.0,
        ge=0,
        description="orders a user may create per second, on average (REST and gRPC together; "
        "beyond: 429 with `Retry-After` / RESOURCE_EXHAUSTED); 0: no limit",
    )
    write_burst: int = Field(
        40, ge=1, description="orders a user may create at once before `write_rate` applies"
    )
    max_streams_per_user: int = Field(
        16, ge=1, description="live `StreamOrderUpdates` streams a user may hold open at once per process"
    )
    call_timeout: float = Field(
        5.0,
        gt=0,
        description="seconds a call to another service may take, retries included, unless the caller "
        "has less time left (a saga step's own timeout, a request's deadline)",
    )
    retry_attempts: int = Field(
        3, ge=1, description="attempts an idempotent call between services makes at most (1: no retry)"
    )
    retry_budget: float = Field(
        0.2,
        ge=0,
        description="retries a downstream may get, as a share of its calls (plus 10 a second), so "
        "retries cannot multiply the load on a service that is down",
    )
    breaker_failures: int = Field(
        5, ge=1, description="consecutive infrastructure failures that open a downstream's circuit breaker"
    )
    breaker_failure_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of failed calls among the last `ORDERMESH_BREAKER_WINDOW` that opens it too",
    )
    breaker_window: int = Field(20, ge=2, description="calls the failure rate is measured over")
    breaker_open_seconds: float = Field(
        5.0, gt=0, description="seconds an open breaker fails calls at once before it lets one probe through"
    )
    bulkhead_limit: int = Field(
        64, ge=1, description="calls to one downstream in flight at once; one more is refused at once (503)"
    )
    breakers: bool = Field(
        True, description="circuit breakers and bulkheads on the calls between services (off: bare calls)"
    )
    policies: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per-downstream overrides of the settings above, as JSON: "
        '`{"payments": {"breaker_open_seconds": 2, "call_timeout": 1}}`',
    )
    faults: Literal["auto", "enabled", "disabled"] = Field(
        "auto",
        description="fault injection (`ordermesh faults`): `auto` allows it in the embedded mode only "
        "(no PostgreSQL, no RabbitMQ, the development secret); `enabled` allows it anywhere",
    )
    log_level: str = Field(
        "info",
        description="the level of every process's logs (`debug`, `info`, `warning`, `error`), then "
        "per logger if wanted: `info,ordermesh.http=warning,aiormq=error`",
    )
    log_format: Literal["auto", "text", "json"] = Field(
        "auto",
        description="how every process logs to stderr: `text`, a line a person reads (`auto`: the "
        "same, its level coloured on a terminal), or `json`, one JSON object per line with "
        "`trace_id`, `order_id` and `saga_id` fields (docs/logging.md)",
    )

    @field_validator(
        "database_url",
        "orders_database_url",
        "payments_database_url",
        "inventory_database_url",
        "shipping_database_url",
        "notifications_database_url",
    )
    @classmethod
    def _database(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://", "sqlite:///", "memory://")):
            raise ValueError("expected postgresql://…, sqlite:///PATH or memory://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        if value and not value.startswith(("amqp://", "amqps://", "sqlite:///", "memory://")):
            raise ValueError("expected amqp://…, sqlite:///PATH or memory://")
        return value

    @field_validator("smtp_url")
    @classmethod
    def _smtp(cls, value: str) -> str:
        if value and not value.startswith(("smtp://", "smtps://")):
            raise ValueError("expected smtp://host:port")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        parse_log_levels(value)
        return value

    @property
    def log_levels(self) -> tuple[int, dict[str, int]]:
        """``ORDERMESH_LOG_LEVEL`` as (the root level, {logger: level})."""
        return parse_log_levels(self.log_level)

    @field_validator("policies", mode="before")
    @classmethod
    def _policies_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"expected JSON ({exc.msg} at column {exc.colno})") from None
        return value

    @field_validator("policies")
    @classmethod
    def _policies(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        unknown = sorted({key for policy in value.values() for key in policy} - set(POLICY_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown policy setting {unknown[0]!r}: expected one of {', '.join(POLICY_FIELDS)}"
            )
        return value

    def policy(self, downstream: str) -> dict[str, float]:
        """The resilience settings for calls to ``downstream``: the global ones, overridden by
        ``ORDERMESH_POLICIES[downstream]``."""
        merged: dict[str, float] = {name: float(getattr(self, name)) for name in POLICY_FIELDS}
        merged.update(self.policies.get(downstream, {}))
        return merged

    @property
    def faults_allowed(self) -> bool:
        """Fault injection is on in the embedded mode (``make up``) or when explicitly enabled."""
        if self.faults != "auto":
            return self.faults == "enabled"
        external = self.broker_url.startswith("amqp") or any(
            getattr(self, f"{name}database_url").startswith("postgres")
            for name in ("", "orders_", "payments_", "inventory_", "shipping_", "notifications_")
        )
        return self.uses_dev_secret and not external

    def service_database_url(self, service: str) -> str:
        """The service's own database: its ``ORDERMESH_<SERVICE>_DATABASE_URL``; else, with
        ``ORDERMESH_DATABASE_URL`` on PostgreSQL, a schema of that database named after the service
        (the kit creates it); else a SQLite file ``<service>.db`` in the data dir."""
        own: str = getattr(self, f"{service}_database_url", "")
        if own:
            return own
        shared = self.database_url
        if shared.startswith(("postgresql://", "postgres://")):
            return with_schema(shared, service)
        if shared:
            return shared  # memory:// (tests) or one explicit SQLite file
        return f"sqlite:///{(self.data_dir / f'{service}.db').resolve()}"

    @property
    def effective_database_url(self) -> str:
        """The order service's database (kept for the order service's callers)."""
        return self.service_database_url("orders")

    def downstream(self, service: Literal["payments", "inventory"]) -> str:
        """The ``host:port`` the order service calls ``service`` at."""
        own: str = getattr(self, f"{service}_target")
        port = getattr(self, f"{service}_grpc_port")
        return own or f"{client_host(self.http_host)}:{port}"

    @property
    def effective_shipping_url(self) -> str:
        return self.shipping_url or f"http://{client_host(self.http_host)}:{self.shipping_http_port}"

    @property
    def effective_broker_url(self) -> str:
        """``amqp://…`` for RabbitMQ (``rabbitmq_fast_path`` off: with ``fast_path=0``, unless the
        URL chooses); unset: the embedded broker, a SQLite file in the data dir."""
        url = self.broker_url
        if not url:
            return f"sqlite:///{(self.data_dir / 'broker.db').resolve()}"
        if self.rabbitmq_fast_path or not url.startswith("amqp"):
            return url
        if any(name == "fast_path" for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)):
            return url
        return f"{url}{'&' if '?' in url else '?'}fast_path=0"

    @property
    def effective_smtp_url(self) -> str:
        """Unset: the embedded mail sink that `ordermesh up` starts."""
        return self.smtp_url or f"smtp://127.0.0.1:{self.mail_sink_port}"

    @property
    def uses_dev_secret(self) -> bool:
        return self.jwt_secret == DEV_JWT_SECRET

    @property
    def loopback_only(self) -> bool:
        """Whether the listeners are reachable from this machine alone."""
        if self.http_host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.http_host).is_loopback
        except ValueError:
            return False  # a name: it may resolve to anything

    def check_exposure(self) -> None:
        """``ConfigError`` for a setup that lets anyone in: the development JWT secret is in the
        source, so with it anyone can sign a token for any user; fine on loopback, not beyond."""
        if self.uses_dev_secret and not self.loopback_only:
            raise ConfigError(
                f"ORDERMESH_JWT_SECRET is the development default (published in the source) and "
                f"ORDERMESH_HTTP_HOST={self.http_host!r} is reachable from other machines: set "
                "ORDERMESH_JWT_SECRET to a secret of your own",
                "ORDERMESH_JWT_SECRET",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``env`` (default: the process environment); ``ConfigError`` names the first bad
        variable and what it expects."""
        return load(env)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def parse_log_levels(value: str) -> tuple[int, dict[str, int]]:
    """``info,ordermesh.http=warning`` -> (20, {"ordermesh.http": 30}); ``ValueError`` naming the
    part that is not ``LEVEL`` or ``LOGGER=LEVEL``."""
    root, loggers = _LEVELS["info"], {}
    for part in (p.strip() for p in value.split(",") if p.strip()):
        name, _, level = part.rpartition("=")
        number = _LEVELS.get(level.strip().lower())
        if number is None or (name == "" and "=" in part):
            raise ValueError(f"{part!r}: expected LEVEL or LOGGER=LEVEL, LEVEL one of {', '.join(_LEVELS)}")
        if name:
            loggers[name.strip()] = number
        else:
            root = number
    return root, loggers


def client_host(host: str) -> str:
    """How a client reaches a listener bound to ``host``: a wildcard bind is reached on loopback."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def with_schema(url: str, service: str) -> str:
    """``url`` with ``search_path`` set to the service's schema (``P_service`` where the URL
    already names a search path ``P``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = next((v for k, v in query if k == "search_path"), "")
    schema = f"{prefix}_{service}" if prefix else service
    query = [(k, v) for k, v in query if k != "search_path"] + [("search_path", schema)]
    return urlunsplit(parts._replace(query=urlencode(query)))


_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@", re.I
)


def redact_urls(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``: what we print or log
    never carries a credential (``postgresql://app:s3cret@db/x`` -> ``postgresql://app:***@db/x``)."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def schema_of(url: str) -> str | None:
    """The ``search_path`` a PostgreSQL URL selects, if any."""
    return next((v for k, v in parse_qsl(urlsplit(url).query) if k == "search_path"), None)


def private_files(data_dir: Path | None = None) -> None:
    """What this process creates is its user's alone (databases, the mail sink's mail: personal
    data): files 0600, folders 0700; ``data_dir``, if it exists already, is made 0700 too."""
    os.umask(0o077)
    if data_dir is not None and data_dir.is_dir():
        data_dir.chmod(0o700)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: ``os.environ``); empty variables count as unset."""
    source = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = source.get(ENV_PREFIX + name.upper())
        if raw:
            values[name] = raw
    try:
        # Values are passed in, not read again from the environment: ``env`` is the whole truth.
        return Settings.model_validate(values, context=None, by_name=True)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        variable = ENV_PREFIX + name.upper()
        raise ConfigError(f"{variable}={values.get(name, '')!r}: {error['msg']}", variable) from exc


def markdown_table() -> str:
    """The README's settings table, generated from the fields."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "unset" if default in ("", None) else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


BEGIN, END = "<!-- settings:begin -->\n", "<!-- settings:end -->"


def readme_with_table(readme: str) -> str:
    """``readme`` with the text between the settings markers replaced by ``markdown_table()``."""
    head, _, rest = readme.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}{markdown_table()}{END}{tail}"


if __name__ == "__main__":  # `make readme`
    import sys

    if sys.argv[1:2] == ["--readme"]:
        path = Path(sys.argv[2])
        path.write_text(readme_with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(markdown_table(), end="")

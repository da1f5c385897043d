"""One settings object: every ORDERMESH_* variable, validated, documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest

from ordermesh.config import BEGIN, END, Settings, load, markdown_table, readme_with_table
from ordermesh.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_one_the_code_generates() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text
    assert readme_with_table(text) == text, "README.md's settings table drifted: run `make readme`"
    for name in Settings.model_fields:
        assert f"`ORDERMESH_{name.upper()}`" in markdown_table()


@pytest.mark.parametrize(
    ("variable", "raw", "expects"),
    [
        ("ORDERMESH_HTTP_PORT", "http", "valid integer"),
        ("ORDERMESH_GRPC_PORT", "70000", "less than or equal to 65535"),
        ("ORDERMESH_DATABASE_URL", "mysql://db", "expected postgresql://"),
        ("ORDERMESH_BROKER_URL", "kafka://x", "expected amqp://"),
        ("ORDERMESH_SMTP_URL", "mail.example.com", "expected smtp://"),
        ("ORDERMESH_PAYMENT_ERROR_RATE", "2", "less than or equal to 1"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(variable: str, raw: str, expects: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({variable: raw})
    message = str(caught.value)
    assert message.startswith(f"{variable}={raw!r}: ") and expects in message and "\n" not in message
    assert caught.value.variable == variable


def test_empty_means_unset_and_the_environment_is_the_whole_truth() -> None:
    assert load({"ORDERMESH_HTTP_PORT": ""}).http_port == 8000
    assert load({}).payment_limit == 100000


def test_each_service_has_its_own_database(tmp_path: Path) -> None:
    embedded = load({"ORDERMESH_DATA_DIR": str(tmp_path)})
    assert embedded.service_database_url("payments") == f"sqlite:///{tmp_path.resolve()}/payments.db"
    shared = load({"ORDERMESH_DATABASE_URL": "postgresql://pg/db"})
    assert shared.service_database_url("inventory") == "postgresql://pg/db?search_path=inventory"
    prefixed = load({"ORDERMESH_DATABASE_URL": "postgresql://pg/db?search_path=t1&sslmode=off"})
    assert prefixed.service_database_url("orders") == "postgresql://pg/db?sslmode=off&search_path=t1_orders"
    own = load(
        {"ORDERMESH_DATABASE_URL": "postgresql://pg/db", "ORDERMESH_SHIPPING_DATABASE_URL": "sqlite:///s.db"}
    )
    assert own.service_database_url("shipping") == "sqlite:///s.db"
    assert own.effective_database_url == "postgresql://pg/db?search_path=orders"

"""The committed AsyncAPI document (docs/asyncapi.json) is the one the code generates, and it
covers every exchange, routing key and queue the code uses."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ordermesh.asyncapi import CONTRACTS, asyncapi_document, asyncapi_json
from ordermesh.asyncapi.consumers import CONSUMERS
from ordermesh.catalog import consumer_queues
from ordermesh.messaging import port
from ordermesh.messaging.rabbitmq.naming import Names
from ordermesh.messaging.topics import matches
from ordermesh.services.inventory import consumers as inventory_consumers
from ordermesh.services.notifications import service as notifications
from ordermesh.services.orders import choreography
from ordermesh.services.orders.domain import OrderAggregate
from ordermesh.services.orders.events import OrderLine
from ordermesh.services.orders.outbox import EXCHANGE, ROUTING_KEYS
from ordermesh.services.orders.schemas import Order
from ordermesh.services.payments import consumers as payment_consumers
from ordermesh.services.shipping import consumers as shipping_consumers
from tests.helpers import assert_committed_document

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
HOW = "regenerate with `python -m ordermesh.asyncapi > docs/asyncapi.json` and commit it"


def test_committed_document_matches_the_code() -> None:
    assert_committed_document(COMMITTED, asyncapi_json(), HOW)


def test_serialisation_is_deterministic() -> None:
    text = asyncapi_json()
    assert text == asyncapi_json()
    assert json.loads(text)["asyncapi"] == "3.0.0"


def test_main_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    from ordermesh.asyncapi import main

    main()
    assert capsys.readouterr().out == asyncapi_json()


def test_python_m_prints_the_document() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ordermesh.asyncapi"], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout == asyncapi_json()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: only local references are expected"
    node: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref} (no {part!r})"
        node = node[part]
    if isinstance(node, dict) and set(node) == {"$ref"}:
        return _resolve(document, node["$ref"])  # a reference to a reference
    return node


def test_every_ref_resolves() -> None:
    document = asyncapi_document()
    refs = _refs(document)
    assert refs
    for ref in refs:
        _resolve(document, ref)


def test_every_routing_key_has_a_channel_and_a_message() -> None:
    document = asyncapi_document()
    for event, key in ROUTING_KEYS.items():
        channel = document["channels"].get(key)
        assert channel is not None, f"no channel for routing key {key}"
        assert channel["address"] == key
        assert channel["bindings"]["amqp"]["is"] == "routingKey"
        assert channel["bindings"]["amqp"]["exchange"] | {"vhost": "/"} == {
            "name": EXCHANGE,
            "type": "topic",
            "durable": True,
            "autoDelete": False,
            "vhost": "/",
        }
        message = _resolve(document, channel["messages"][event]["$ref"])
        assert message is document["components"]["messages"][event]
        assert message["bindings"]["amqp"]["messageType"] == key
        assert message["payload"] == {"$ref": "#/components/schemas/Order"}
        operation = document["operations"][f"send{event}"]
        assert operation["action"] == "send"
        assert _resolve(document, operation["channel"]["$ref"]) is channel


def _consumed() -> dict[str, tuple[str, str]]:
    """queue -> (exchange, binding key) of every service's consumers, from the services' constants."""
    notified = {queue: (notifications.EXCHANGE, key) for queue, key in notifications.QUEUES.items()}
    return {
        **choreography.QUEUES,
        **payment_consumers.QUEUES,
        **inventory_consumers.QUEUES,
        **shipping_consumers.QUEUES,
        **notified,
    }


def _routing_key(document: dict[str, Any], message: dict[str, str]) -> str:
    key: str = _resolve(document, message["$ref"])["bindings"]["amqp"]["messageType"]
    return key


def _routing_keys(exchange: str) -> list[str]:
    keys = {EXCHANGE: list(ROUTING_KEYS.values())} | {c.EXCHANGE: list(c.ROUTING_KEYS) for c in CONTRACTS}
    return keys[exchange]


def test_every_consumer_queue_has_a_channel_a_dead_letter_channel_and_a_receive_operation() -> None:
    document = asyncapi_document()
    receives = {
        op["channel"]["$ref"]: op for op in document["operations"].values() if op["action"] == "receive"
    }
    queues = consumer_queues()
    assert set(queues) == set(_consumed())
    assert len(receives) == len(queues)
    for queue in queues:
        channel = document["channels"].get(queue)
        assert channel is not None, f"no channel for queue {queue}"
        assert channel["bindings"]["amqp"]["is"] == "queue"
        assert channel["bindings"]["amqp"]["queue"]["name"] == queue
        assert channel["x-ordermesh-dead-letter-queue"] == f"{queue}.dlq"
        dlq = document["channels"].get(f"{queue}.dlq")
        assert dlq is not None, f"no channel for the dead letters of {queue}"
        assert dlq["bindings"]["amqp"]["queue"]["name"] == f"{queue}.dlq"
        assert list(dlq["messages"]) == ["DeadLetter"]
        operation = document["operations"][f"receive_{queue}"]
        assert receives[f"#/channels/{queue}"] is operation
        assert operation["bindings"]["amqp"]["ack"] is True


def test_a_queue_takes_every_message_its_binding_key_matches() -> None:
    document = asyncapi_document()
    for queue, (exchange, binding_key) in _consumed().items():
        channel = document["channels"][queue]
        assert channel["x-ordermesh-binding"] == {"bindingKeys": [binding_key], "exchange": exchange}
        taken = {
            _resolve(document, m["$ref"])["bindings"]["amqp"]["messageType"]
            for m in channel["messages"].values()
        }
        assert taken == {key for key in _routing_keys(exchange) if matches(binding_key, key)}, queue
        assert taken, f"{queue}: its binding key {binding_key} takes nothing"
        operation = document["operations"][f"receive_{queue}"]
        received = {
            _resolve(document, m["$ref"])["bindings"]["amqp"]["messageType"] for m in operation["messages"]
        }
        assert received == taken
        for key in taken:
            assert f"`{key}`" in operation["description"], f"{queue}: what it does on {key} is not said"


def test_the_order_services_payment_queue_takes_the_three_payment_messages() -> None:
    channel = asyncapi_document()["channels"]["orders.payment_events"]
    assert channel["x-ordermesh-binding"] == {"bindingKeys": ["payment.*"], "exchange": "payments"}
    assert set(channel["messages"]) == {"payment.processed", "payment.failed", "payment.refunded"}


def test_a_notification_queue_takes_its_order_event() -> None:
    document = asyncapi_document()
    for queue, binding_key in notifications.QUEUES.items():
        names = set(document["channels"][queue]["messages"])
        assert names == {event for event, key in ROUTING_KEYS.items() if key == binding_key}


def test_retry_queues_follow_each_services_retry_policy() -> None:
    document = asyncapi_document()
    policies = [
        (choreography.QUEUES, choreography.RETRY),
        (payment_consumers.QUEUES, payment_consumers.RETRY),
        (inventory_consumers.QUEUES, inventory_consumers.RETRY),
        (shipping_consumers.QUEUES, shipping_consumers.RETRY),
        (notifications.QUEUES, notifications.DEFAULT_RETRY),
    ]
    for queues, retry in policies:
        delays = sorted({Names.delay_ms(retry, attempt) for attempt in range(1, retry.max_attempts)})
        for queue in queues:
            channel = document["channels"][queue]
            assert channel["x-ordermesh-retry-queues"] == [f"{queue}.retry.{ms}" for ms in delays]
            assert f"up to {retry.max_attempts} attempts" in channel["description"]


def test_receive_operations_say_when_and_how_a_service_consumes() -> None:
    operations = asyncapi_document()["operations"]
    broker_default = inspect.signature(port.Broker.subscribe).parameters["prefetch"].default
    choreographed = [
        (choreography.QUEUES, choreography.INBOX_CONSUMER),
        (payment_consumers.QUEUES, payment_consumers.INBOX_CONSUMER),
        (inventory_consumers.QUEUES, inventory_consumers.INBOX_CONSUMER),
        (shipping_consumers.QUEUES, shipping_consumers.INBOX_CONSUMER),
    ]
    for queues, inbox in choreographed:
        for queue in queues:
            operation = operations[f"receive_{queue}"]
            consumer = operation["x-ordermesh-consumer"]
            assert consumer["sagaStyles"] == ["choreographed"] and consumer["inbox"] == inbox
            assert consumer["prefetch"] == broker_default
            assert "only with `ORDERMESH_SAGA=choreographed`" in operation["description"]
            assert f"`{inbox}` inbox" in operation["description"]
    for queue in notifications.QUEUES:
        operation = operations[f"receive_{queue}"]
        consumer = operation["x-ordermesh-consumer"]
        assert consumer["sagaStyles"] == ["orchestrated", "choreographed"]
        assert consumer["prefetch"] == notifications.DEFAULT_PREFETCH
        assert consumer["inbox"] == notifications.INBOX_CONSUMER
    payments_created = operations["receive_payments.order_created"]["description"]
    assert "charges" in payments_created and "`payment.processed`" in payments_created
    assert "refunds" in operations["receive_payments.order_cancelled"]["description"]


def test_envelope_and_dead_letter_headers_are_described() -> None:
    schemas = asyncapi_document()["components"]["schemas"]
    envelope = schemas["EnvelopeHeaders"]["properties"]
    header_names = [value for name, value in vars(port).items() if name.startswith("H_")]
    for name in [*header_names, port.TRACEPARENT, port.TRACESTATE]:
        if name != port.H_DEAD_AT:
            assert name in envelope, f"header {name} is not documented"
    for prop in ("message_id", "type", "correlation_id", "content_type", "timestamp"):
        assert prop in envelope
    assert envelope["content_type"]["const"] == "application/json"
    dead = schemas["DeadLetterHeaders"]["allOf"][1]
    assert set(dead["required"]) == {
        port.H_ERROR,
        port.H_ATTEMPT,
        port.H_ORIGINAL_EXCHANGE,
        port.H_ORIGINAL_ROUTING_KEY,
        port.H_DEAD_AT,
    }


def _order_resources() -> list[dict[str, Any]]:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    order = OrderAggregate.create(
        "ord-1", "user-1", "ada@example.com", "EUR", [OrderLine("SKU-1", 2, 1250)], now
    )
    return [order.to_snapshot()]


def _payload_schema() -> dict[str, Any]:
    """``Order`` with the document's components, so its ``#/components/schemas/…`` refs resolve."""
    components = asyncapi_document()["components"]
    return {**components["schemas"]["Order"], "components": {"schemas": components["schemas"]}}


def test_order_payload_schema_is_the_pydantic_model() -> None:
    schema = asyncapi_document()["components"]["schemas"]["Order"]
    assert set(schema["required"]) == set(Order.model_json_schema()["required"])
    for resource in _order_resources():
        assert set(resource) == set(schema["properties"])
        Order.model_validate(resource)


def test_order_payload_schema_validates_a_real_order() -> None:
    schema = _payload_schema()
    if importlib.util.find_spec("jsonschema") is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        for resource in _order_resources():
            validator.validate(resource)
            assert not validator.is_valid({**resource, "status": "lost"})
    elif importlib.util.find_spec("jsonschema_rs") is not None:
        import jsonschema_rs

        rs_validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
        for resource in _order_resources():
            rs_validator.validate(resource)
            assert not rs_validator.is_valid({**resource, "status": "lost"})
    else:
        pytest.skip("neither jsonschema nor jsonschema_rs is installed")


def test_every_published_contract_message_has_a_channel_a_message_and_its_schema() -> None:
    document = asyncapi_document()
    published = [(c, key) for c in CONTRACTS for key in c.ROUTING_KEYS]
    assert {c.EXCHANGE for c, _ in published} == {"payments", "inventory", "shipping"}
    for contract, key in published:
        channel = document["channels"].get(key)
        assert channel is not None, f"no channel for {contract.EXCHANGE} routing key {key}"
        assert channel["bindings"]["amqp"]["exchange"]["name"] == contract.EXCHANGE
        message = _resolve(document, channel["messages"][key]["$ref"])
        assert message["bindings"]["amqp"]["messageType"] == key
        schema = _resolve(document, message["payload"]["$ref"])
        model = contract.BODIES[key].model_json_schema(mode="serialization")
        assert set(schema["properties"]) == set(model["properties"])
        assert set(schema.get("required", [])) == set(model.get("required", []))
        operation = document["operations"][f"send_{key}"]
        assert operation["action"] == "send" and _resolve(document, operation["channel"]["$ref"]) is channel


def test_a_message_no_one_described_stops_the_generation() -> None:
    orders = replace(CONSUMERS[0], reactions={})
    with pytest.raises(LookupError, match="does not say what the service does"):
        orders.reaction("payment.processed")

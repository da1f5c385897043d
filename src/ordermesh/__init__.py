"""ordermesh: order processing services that talk REST, gRPC, messages, events and sagas."""

__version__ = "0.1.0"

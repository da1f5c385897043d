"""The inventory service: stock per SKU and per-order reservations over gRPC, with its own database."""

"""The payment service: charges and refunds orders once each, with a ledger and an outbox."""

"""HTTP edge: FastAPI app factory, auth, errors, idempotency, metrics."""

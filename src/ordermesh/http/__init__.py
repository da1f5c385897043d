"""HTTP edge: FastAPI app factory, problem-document handlers, metrics, the uvicorn server."""

"""gRPC edge shared by services: server builder, interceptors, status mapping, code generation."""

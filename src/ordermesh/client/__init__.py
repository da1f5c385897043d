"""Clients for ordermesh services: REST (sync and async) and gRPC (async, with a sync twin).

All speak in plain dicts shaped like the REST resources, raise ``ordermesh.errors`` classes, and
put a timeout on every call.
"""

from ordermesh.client.grpc import OrdersGrpcClient, SyncOrdersGrpcClient
from ordermesh.client.http import AsyncOrdermeshClient, OrdermeshClient

__all__ = ["AsyncOrdermeshClient", "OrdermeshClient", "OrdersGrpcClient", "SyncOrdersGrpcClient"]

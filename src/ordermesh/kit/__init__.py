"""The service kit: every ordermesh service is a ``ServiceSpec`` built by one composition root.

A service is a folder with its domain, its contract and a ``spec.py``::

    async def build(rt: Runtime) -> None:
        db = await rt.database()                 # its own database, closed at exit
        outbox = await rt.outbox()               # published to the broker in the background
        rt.grpc(MyServicer(db, outbox).register, "ordermesh.my.v1.MyService")

    SPEC = ServiceSpec(name="my", title="ordermesh my", build=build,
                       http_port="my_http_port", grpc_port="my_grpc_port")

``runtime.started`` runs it (tests: ``kit.testing.running``); ``kit.process.main`` is its process
(``ordermesh run NAME``); ``kit.supervisor`` runs them all (``ordermesh up``).
"""

from ordermesh.kit.runtime import Runtime, ServiceSpec, started

__all__ = ["Runtime", "ServiceSpec", "started"]

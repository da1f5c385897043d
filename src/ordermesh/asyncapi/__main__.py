"""``python -m ordermesh.asyncapi``: print the AsyncAPI document (``make asyncapi`` writes it to
``docs/asyncapi.json``)."""

from ordermesh.asyncapi import main

main()

"""The shipping service: one shipment per order, over REST, announced on the ``shipping`` exchange."""

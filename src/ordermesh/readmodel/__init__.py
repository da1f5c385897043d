"""CQRS read models: documents kept by projections, each batch committed with its checkpoint."""

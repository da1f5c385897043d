"""Published message contracts: exchanges, routing keys and body schemas, one module per producing
service. Consumers import these, never the producing service's package."""

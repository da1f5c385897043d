"""The order service: event-sourced orders over REST and gRPC."""

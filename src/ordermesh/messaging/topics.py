"""Topic-exchange matching, as RabbitMQ does it: ``*`` is one word, ``#`` is zero or more."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4096)
def matches(binding_key: str, routing_key: str) -> bool:
    return _match(tuple(binding_key.split(".")), tuple(routing_key.split(".")))


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        # Zero words, or swallow one and try again.
        return _match(rest, words) or (bool(words) and _match(pattern, words[1:]))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])

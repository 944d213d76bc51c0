"""Which builder holds a workload's cache: rendezvous hashing with bounded load (keys: `workload`).

Pure logic. Rendezvous (highest-random-weight) hashing gives each key a stable order of builders:
a key keeps its first builder as long as that builder exists, and when a builder joins or leaves
only the keys whose first choice it is (about 1/N) move. Bounded load (Mirrokni et al.) caps how
many in-flight builds a builder may take before a key's next choice is preferred, so one popular
builder cannot become a hot spot.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

DEFAULT_LOAD_FACTOR = 1.25


def rendezvous_score(key: str, builder: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{builder}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def preference_order(key: str, builders: Iterable[str]) -> list[str]:
    """All builders, best first, by rendezvous score alone (no load): the key's stable order."""
    return sorted(builders, key=lambda b: (rendezvous_score(key, b), b), reverse=True)


def load_cap(
    total_in_flight: int, capacities: Mapping[str, int], load_factor: float = DEFAULT_LOAD_FACTOR
) -> dict[str, int]:
    """Per-builder cap on in-flight builds: its share of (current + this build) × load factor, at least 1."""
    total_capacity = sum(capacities.values())
    if total_capacity <= 0:
        return {b: 0 for b in capacities}
    demand = total_in_flight + 1
    return {
        builder: max(1, math.ceil(load_factor * demand * capacity / total_capacity))
        for builder, capacity in capacities.items()
    }


def rank_builders(
    key: str,
    capacities: Mapping[str, int],
    in_flight: Mapping[str, int],
    load_factor: float = DEFAULT_LOAD_FACTOR,
) -> list[str]:
    """Builders in the order a build of `key` should try them.

    Builders under their load cap come first, in the key's preference order; builders at or over
    the cap follow, in the same order, so they are still tried when everything is busy.
    """
    order = preference_order(key, capacities)
    caps = load_cap(sum(in_flight.get(b, 0) for b in capacities), capacities, load_factor)
    under = [b for b in order if in_flight.get(b, 0) < caps[b]]
    over = [b for b in order if in_flight.get(b, 0) >= caps[b]]
    return under + over

"""What pseudonymous indexes cost (context ``pseudonymous_indexes``): CPU per stored id, and per event.

    python -m bench.pseudonyms

Process time to compute the stored id of a customer id, best of 5 over the same ids: ``PlainIds`` (the id
itself, the default) and ``HmacIds`` (HMAC-SHA256 under a 64-character key, as the stack's secret holds). The
difference, at the functions' 512 MB (0.29 vCPU), priced per million ids; per event it is that times the ids
computed per event: one members index write per transition, and per enabled integration a ledger read and a
write per delivery (email also reads and writes its frequency cap). The secret's own monthly price and its
reads at cold start are in ``pipeline_model.pseudonym_fixed_monthly``.
"""

from __future__ import annotations

import json
import secrets
import string
import sys
from typing import Any

from bench.core_speed import best_of
from cdp.core.pseudonyms import HmacIds, PlainIds, Pseudonyms

MEMORY_MB = 512  # the stack's default memory_mb
VCPU_MB = 1769  # the memory that buys one vCPU


def ids_per_transition(integrations: int, email: bool) -> int:
    """Stored ids computed per membership transition: the members write, two ledger requests per destination,
    two for email's cap."""
    return 1 + 2 * integrations + (2 if email else 0)


def _time_per_id(ids: Pseudonyms, customers: list[str]) -> float:
    def run() -> None:
        for customer in customers:
            ids.pseudonym(customer)

    return best_of(5, run) / len(customers)


def per_event(usd_per_million_ids: float, transitions_per_event: float, integrations: int = 4) -> dict[str, Any]:
    """The added USD per million events, at this many transitions per event and enabled integrations."""
    ids = transitions_per_event * ids_per_transition(integrations, email=integrations > 0)
    return {"per_event": {"transitions": transitions_per_event, "integrations": integrations, "ids": ids},
            "usd_per_million_events": ids * usd_per_million_ids}


def measure(quick: bool = False, transitions_per_event: float = 0.11) -> dict[str, Any]:
    """``transitions_per_event``: the figure before real-shaped traffic was measured; ``bench.run`` gives its
    run's own."""
    from bench import prices

    customers = [f"user-{n:08d}-{'x' * 16}" for n in range(20_000 if quick else 100_000)]  # ~30 characters
    key = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(64)).encode()
    plain_s = _time_per_id(PlainIds(), customers)
    hmac_s = _time_per_id(HmacIds(key), customers)
    extra_s = max(0.0, hmac_s - plain_s)
    billed_s = extra_s * VCPU_MB / MEMORY_MB  # the CPU stretched by the memory setting's vCPU share
    usd_per_million_ids = 1e6 * billed_s * MEMORY_MB / 1024 * prices.LAMBDA_ARM_GB_SECOND
    return {"ids": len(customers), "plain_us_per_id": plain_s * 1e6, "hmac_us_per_id": hmac_s * 1e6,
            "hmac_to_plain": hmac_s / plain_s if plain_s else float("inf"), "extra_us_per_id": extra_s * 1e6,
            "usd_per_million_ids": usd_per_million_ids, "memory_mb": MEMORY_MB,
            **per_event(usd_per_million_ids, transitions_per_event)}


if __name__ == "__main__":
    from bench import pipeline_model

    figures = measure("--quick" in sys.argv[1:])
    figures["fixed_monthly_usd"] = pipeline_model.pseudonym_fixed_monthly()
    print(json.dumps(figures, indent=2))

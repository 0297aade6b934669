"""The plain-record tables (write keys, the id map) as pynamodb models, bound to a deployment at cold start.

pynamodb keeps a model's table name and connection on its class, so each table gets a subclass of its model
made when the function's configuration is read, never at import.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pynamodb.models import Model

M = TypeVar("M", bound=Model)


def bind_table(model: type[M], table_name: str, region: str | None = None, host: str | None = None) -> type[M]:
    """``model`` bound to one table (and region, and endpoint when not AWS's own)."""
    meta: dict[str, Any] = {"table_name": table_name}
    if region:
        meta["region"] = region
    if host:
        meta["host"] = host
    return type(f"Bound{model.__name__}", (model,), {"Meta": type("Meta", (), meta)})

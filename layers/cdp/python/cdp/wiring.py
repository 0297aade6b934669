"""A function's dependencies, built at its cold start from its environment, with any part given instead.

Every handler's ``build(**overrides)`` uses :func:`assemble`: tests and the local stack pass the parts
they share or fake (``build(clock=shared_clock)``), and a part that is given is never built, so it is
never read from the environment either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def assemble(kind: Callable[..., T], overrides: Mapping[str, Any], **parts: Callable[[], Any]) -> T:
    """``kind(name=...)`` for every part: ``overrides[name]`` when given, else ``parts[name]()``.

    An override that names no part is a TypeError, so a misspelt one never goes unnoticed.
    """
    unknown = sorted(set(overrides) - set(parts))
    if unknown:
        raise TypeError(f"no dependency named {', '.join(unknown)} (there are {', '.join(parts)})")
    return kind(**{name: overrides[name] if name in overrides else make() for name, make in parts.items()})

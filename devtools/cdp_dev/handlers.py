"""The Lambda functions' handler modules, imported from their files.

Every function's module is called ``handler`` (functions/<name>/handler.py, as Lambda imports it), so each is
imported here under a name of its own, ``<name>_handler``, once per process: the local stack, the tests and
the benchmarks then share one module, and with it one cold start.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_file(name: str, path: Path) -> ModuleType:
    """The Python file at ``path``, imported as module ``name`` (and registered in sys.modules under it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_handler(root: Path, name: str) -> ModuleType:
    """functions/<name>/handler.py under ``root``, as module ``<name>_handler``: imported on the first call, the
    same module on every later one (a handler of another root is imported in its place)."""
    module_name, path = f"{name}_handler", (root / "functions" / name / "handler.py").resolve()
    loaded = sys.modules.get(module_name)
    if loaded is not None and loaded.__file__ is not None and Path(loaded.__file__).resolve() == path:
        return loaded
    return load_file(module_name, path)

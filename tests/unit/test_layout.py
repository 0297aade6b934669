"""The layout holds: the Lambda layer is runtime code only, and the pure core imports no AWS, CDK, tool or handler.

Read statically, with ast over the files: nothing is imported, so no import's side effects count, and an import
inside a function counts as much as one at the top. The core's imports are followed through the package: a core
module importing a runtime module that imports boto3 imports boto3.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "cdp" / "python"  # the folder the Lambda layer is made of (cdk/functions.py)
PACKAGE = LAYER / "cdp"
CORE = PACKAGE / "core"
DEVTOOLS = ROOT / "devtools" / "cdp_dev"

# What a function has besides the layer: the Lambda runtime (boto3, botocore) and layers/deps (PyYAML and
# Powertools, which brings pydantic).
RUNTIME = {"boto3", "botocore", "yaml", "aws_lambda_powertools", "pydantic", "pynamodb"}
# The models layer's packages, which only cdp.models imports (the jobs function alone has that layer).
MODELS_LAYER = {"numpy", "sklearn", "threadpoolctl"}
DEVELOPER_TOOLS = ("cdp_dev",)
# The pure core: no AWS SDK, emulator, CDK, Lambda runtime library, adapter, developer tool or handler, and no
# loading of modules by path (importlib), which is how the handlers are loaded.
NOT_IN_CORE = ("boto3", "botocore", "moto", "aws_cdk", "cdk", "cdk_nag", "constructs", "aws_lambda_powertools",
               "cdp.aws", "cdp_dev", "importlib")
IGNORED = ("__pycache__",)  # and *.egg-info, which cdk/functions.py leaves out of the layer asset too


def module_name(path: Path) -> str:
    """cdp/core/events.py -> cdp.core.events; cdp/core/__init__.py -> cdp.core."""
    parts = path.relative_to(LAYER).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module name the source may import, relative imports resolved against ``module``. For
    ``from a import b`` both ``a`` and ``a.b`` (b may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def is_handler(name: str) -> bool:
    """A function's handler module: ``handler`` as Lambda imports it, ``<name>_handler`` as cdp_dev.handlers
    loads it, or anything under functions/."""
    top = name.split(".")[0]
    return top in ("handler", "functions") or top.endswith("_handler")


@cache
def layer_modules() -> dict[str, tuple[Path, set[str]]]:
    """Module name -> (file, the names it imports), for every module of the runtime package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(part in IGNORED for part in path.parts):
            continue
        name = module_name(path)
        found[name] = (path, imported_names(path.read_text(), name, path.name == "__init__.py"))
    return found


def imports_through(modules: dict[str, tuple[Path, set[str]]], start: str) -> dict[str, list[str]]:
    """Every name ``start`` imports, itself or through the package's modules it imports (their parent packages
    included, as importing a module runs them), with the chain of modules that leads to it."""
    chains: dict[str, list[str]] = {}
    queue = [(start, [start])]
    seen = {start}
    while queue:
        current, chain = queue.pop(0)
        for name in sorted(modules[current][1]):
            chains.setdefault(name, chain)
            parts = name.split(".")
            for inner in (".".join(parts[:n]) for n in range(1, len(parts) + 1)):
                if inner in modules and inner not in seen:
                    seen.add(inner)
                    queue.append((inner, [*chain, inner]))
    return chains


def test_the_import_reader_sees_every_kind_of_import() -> None:
    source = ("import boto3.session\nfrom . import engine\nfrom ..aws import dynamo\nfrom .profile import Profile\n"
              "def lazy():\n    import cdp_dev.memory\n    from ingest_handler import build\n")
    names = imported_names(source, "cdp.core.fold")
    assert {"boto3.session", "cdp.core", "cdp.core.engine", "cdp.aws.dynamo", "cdp.core.profile", "cdp_dev.memory",
            "ingest_handler"} <= names
    assert imported_names("from . import x", "cdp.core", is_package=True) == {"cdp.core", "cdp.core.x"}
    assert under("cdp.aws.dynamo", NOT_IN_CORE) and not under("cdp.awsome", NOT_IN_CORE)
    assert is_handler("ingest_handler") and is_handler("functions.api.handler") and not is_handler("cdp.handlers")


def test_the_layer_imports_no_developer_tool_and_no_handler() -> None:
    modules = layer_modules()
    assert "cdp.core.events" in modules and "cdp.pipeline.ingest" in modules, sorted(modules)
    wrong = sorted(f"{name} imports {imported}" for name, (_, names) in modules.items() for imported in names
                   if under(imported, DEVELOPER_TOOLS) or is_handler(imported))
    assert not wrong, "\n".join(wrong)


def test_the_layer_needs_nothing_a_function_does_not_have() -> None:
    """Its third-party imports are the Lambda runtime's and layers/deps': never moto, pytest or the CDK; and
    numpy and scikit-learn (the models layer) only in cdp.models."""
    def allowed(module: str, imported: str) -> set[str]:
        models = module == "cdp.models" or module.startswith("cdp.models.")
        return {*sys.stdlib_module_names, "cdp", "__future__", *RUNTIME, *(MODELS_LAYER if models else ())}

    wrong = sorted(f"{name} imports {imported}" for name, (_, names) in layer_modules().items() for imported in names
                   if imported.split(".")[0] not in allowed(name, imported))
    assert not wrong, "\n".join(wrong)


def core_modules() -> list[str]:
    return [name for name, (path, _) in layer_modules().items() if path.is_relative_to(CORE)]


@pytest.mark.parametrize("module", core_modules())
def test_the_pure_core_imports_no_aws_cdk_tool_or_handler(module: str) -> None:
    chains = imports_through(layer_modules(), module)
    wrong = sorted(f"{imported} (through {' -> '.join(chain)})" for imported, chain in chains.items()
                   if under(imported, NOT_IN_CORE) or is_handler(imported))
    assert not wrong, "\n".join(wrong)


def test_the_layer_folder_holds_the_runtime_package_and_no_developer_tool() -> None:
    entries = {entry.name for entry in LAYER.iterdir() if entry.name not in IGNORED and entry.suffix != ".egg-info"}
    assert entries == {"cdp"}
    tools = {path.stem for path in DEVTOOLS.glob("*.py") if path.stem != "__init__"}
    assert {"cli", "local_stack", "sandbox", "memory"} <= tools
    left = sorted(str(path.relative_to(LAYER)) for path in LAYER.rglob("*")
                  if not any(part in IGNORED or part.endswith(".egg-info") for part in path.parts)
                  and (path.stem in tools or "cdp_dev" in path.parts))
    assert not left, f"developer tools in the layer: {left}"

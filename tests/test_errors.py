"""Every exception class hftransfer defines derives from `hftransfer.errors.HfTransferError` (issue 13).

The classes are found by importing every module of the package (`pkgutil.walk_packages`), so a new exception class
anywhere in hftransfer is checked without being listed here. A module that fails to import fails the test: nothing
is skipped silently. The built-in bases users already catch (`ValueError`, `FileNotFoundError`, `ConnectionError`,
`RuntimeError`) are checked too, and the old import paths must give the very same classes.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import hftransfer
from hftransfer.errors import HfTransferError

PACKAGE_DIR = Path(hftransfer.__file__).parent
# `.py` files inside the package that are not modules of it: scripts that `evaluate.load` runs by path (their
# folders have no `__init__.py`). They define metrics, not exceptions (checked below from their source).
NOT_MODULES = ("metric_modules/",)

# Exception classes that still lack the root; their owner moves them. Marked xfail(strict=True): once the class
# derives from HfTransferError its case passes, strict xfail reports it, and the entry is deleted from here.
# (RecipeError was the last one, issue 13; it now lives in hftransfer.errors, re-exported by hftransfer.recipes.)
PENDING: dict[str, str] = {}

# Class -> the built-in bases it must keep (what users and the CLI catch).
BUILTIN_BASES = {
    "hftransfer.errors.TrainingError": (RuntimeError,),
    "hftransfer.errors.NonFiniteError": (RuntimeError,),
    "hftransfer.errors.RunLockedError": (RuntimeError,),
    "hftransfer.errors.HubUnavailableError": (ConnectionError,),
    "hftransfer.errors.HubPushError": (RuntimeError,),
    "hftransfer.errors.BackboneWeightsError": (ValueError,),
    "hftransfer.errors.WeightsNotFoundError": (ValueError, FileNotFoundError),
    "hftransfer.errors.HubWeightsUnavailableError": (ValueError, ConnectionError),
    "hftransfer.errors.DataError": (ValueError,),
    "hftransfer.errors.BadImageError": (ValueError,),
    "hftransfer.errors.InferenceError": (ValueError,),
    "hftransfer.errors.ExportError": (ValueError,),
    "hftransfer.errors.YAMLLimitError": (ValueError,),
    "hftransfer.errors.RecipeError": (ValueError,),
}

# Old import paths -> the class in hftransfer.errors they must be.
OLD_PATHS = {
    "hftransfer.recipes.RecipeError": "RecipeError",
    "hftransfer._io.YAMLLimitError": "YAMLLimitError",
    "hftransfer.data.BadImageError": "BadImageError",
    "hftransfer.data.DataError": "DataError",
    "hftransfer.data.HubUnavailableError": "HubUnavailableError",
    "hftransfer.data.images.BadImageError": "BadImageError",
    "hftransfer.data.images.DataError": "DataError",
    "hftransfer.data.loading.HubUnavailableError": "HubUnavailableError",
    "hftransfer.export.ExportError": "ExportError",
    "hftransfer.hub.HubPushError": "HubPushError",
    "hftransfer.inference.InferenceError": "InferenceError",
    "hftransfer.weights.BackboneWeightsError": "BackboneWeightsError",
    "hftransfer.weights.HubWeightsUnavailableError": "HubWeightsUnavailableError",
    "hftransfer.weights.WeightsNotFoundError": "WeightsNotFoundError",
}


def _all_modules() -> list[str]:
    names = [hftransfer.__name__]
    names += [info.name for info in pkgutil.walk_packages(hftransfer.__path__, prefix=f"{hftransfer.__name__}.")]
    return sorted(names)


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _all_modules():
        module = importlib.import_module(name)  # an import error fails the collection: no module is skipped
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.split(".")[0] == hftransfer.__name__
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


CLASSES = _exception_classes()


def _case(qualified_name: str):
    if qualified_name in PENDING:
        return pytest.param(
            qualified_name, id=qualified_name, marks=pytest.mark.xfail(strict=True, reason=PENDING[qualified_name])
        )
    return pytest.param(qualified_name, id=qualified_name)


def _defines_exception_class(path: Path) -> bool:
    # Scripts cannot be imported here: read their class definitions instead.
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name.endswith(("Error", "Exception")):
                    return True
    return False


def test_every_python_file_of_the_package_is_walked():
    walked = set(_all_modules())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        if relative.startswith(NOT_MODULES):
            assert not _defines_exception_class(path), f"{relative} defines an exception class outside a module"
            continue
        parts = [hftransfer.__name__, *relative[: -len(".py")].split("/")]
        if parts[-1] == "__init__":
            parts.pop()
        assert ".".join(parts) in walked, f"{relative} is not imported by the walk over the package"


def test_the_walk_finds_the_known_exception_classes():
    # A guard on the discovery itself: these must all be found (an empty walk would pass every check below).
    for name in ("hftransfer.errors.HfTransferError", "hftransfer.errors.DataError", "hftransfer.errors.RecipeError"):
        assert name in CLASSES
    private = {name.rsplit(".", 1)[-1] for name in CLASSES}
    assert {"_CacheInvalid", "_ClientGone", "_BadFraming", "GlobTooExpensive", "HubHTTPError"} <= private


@pytest.mark.parametrize("qualified_name", [_case(name) for name in sorted(CLASSES)])
def test_every_exception_class_derives_from_hftransfer_error(qualified_name):
    cls = CLASSES[qualified_name]
    assert issubclass(cls, HfTransferError), (
        f"{qualified_name} derives from {[base.__name__ for base in cls.__mro__[1:]]}, not HfTransferError: define it "
        "in hftransfer/errors.py as `class X(HfTransferError, <its built-in base>)` and re-export it from its module."
    )


@pytest.mark.parametrize("qualified_name", sorted(BUILTIN_BASES))
def test_builtin_bases_users_catch_are_kept(qualified_name):
    module_name, class_name = qualified_name.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    for base in BUILTIN_BASES[qualified_name]:
        assert issubclass(cls, base), f"{qualified_name} must stay a {base.__name__}"


def test_hub_errors_for_weights_are_hub_errors():
    from hftransfer.errors import HubUnavailableError, HubWeightsUnavailableError

    assert issubclass(HubWeightsUnavailableError, HubUnavailableError)


@pytest.mark.parametrize("old_path", sorted(OLD_PATHS))
def test_old_import_paths_give_the_same_classes(old_path):
    import hftransfer.errors

    module_name, class_name = old_path.rsplit(".", 1)
    assert getattr(importlib.import_module(module_name), class_name) is getattr(hftransfer.errors, OLD_PATHS[old_path])


def test_errors_module_exports_every_class_it_defines():
    import hftransfer.errors

    defined = {
        name
        for name, value in vars(hftransfer.errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == "hftransfer.errors"
    }
    assert defined == set(hftransfer.errors.__all__)


def test_bad_image_error_message_names_the_files():
    from hftransfer.data import BadImage, BadImageError

    error = BadImageError([BadImage("a.png", "truncated"), BadImage("b.jpg", "empty file", split="train")])
    assert error.bad_images[0].name == "a.png"
    assert str(error).startswith("2 bad images: a.png (truncated), [train] b.jpg (empty file).")

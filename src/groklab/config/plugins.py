"""Plugins: a user's own tasks, measure sets and models, from their own modules, without editing groklab.

A plugin is a Python module that registers things when it is imported, through the same functions the
built-ins use (`groklab.register_task`, `groklab.register_measure`, `groklab.register_model`); from then
on its entries are indistinguishable from built-ins. Two ways in, both discovered here, in the config
layer, when a config is validated (`RunConfig.plugins`):

- installed: a distribution that declares an entry point in the group `groklab.plugins`
  (pyproject.toml: `[project.entry-points."groklab.plugins"]  mything = "mypkg.groklab_plugin"`, the value
  naming the module). Every such module is imported once per process, the first time a config is
  validated. `GROKLAB_DISABLE_PLUGIN_AUTOLOAD=1` skips them (as pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD).
- named by a config: `plugins: [my_task.py, mypkg.tasks]`. An entry ending in `.py` (or containing a
  `/`) is a file: relative to the config file it is written in (`load_config`), else to the working
  directory, and stored absolute, so a run's config.yaml finds it again from any directory and in any
  process (`--resume`, `measure`, `report`, sweep workers). Anything else is a dotted module name,
  imported from sys.path (installed, or on PYTHONPATH) and stored as written.

Each module is imported once per process. One that fails to import, or registers something invalid (a
task whose params are no pydantic model, a name taken by a built-in, ...), is a `PluginError`: one line
naming the plugin, exit code 2 on the command line, before any run directory exists.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from groklab.errors import ConfigError

ENTRY_POINT_GROUP = "groklab.plugins"
NO_AUTOLOAD = "GROKLAB_DISABLE_PLUGIN_AUTOLOAD"


class PluginError(ConfigError):
    """A plugin that cannot be imported, or that registers something invalid."""


_files: dict[str, ModuleType] = {}  # absolute path -> the module imported from it
_entry_points: PluginError | bool = False  # True once loaded; the error, to raise again, if they failed


def names_file(spec: str) -> bool:
    """A `plugins:` entry naming a file (else a dotted module name)."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def resolve_plugin(spec: str, base: str | Path | None = None) -> str:
    """A file entry as an absolute path (a relative one taken from `base`, default the working
    directory); a module name unchanged."""
    spec = spec.strip()
    if not names_file(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = Path(base if base is not None else Path.cwd()) / path
    return str(path.resolve())


def resolve_plugins_in(data: object, base: str | Path) -> object:
    """A config mapping read from a file in directory `base`: its relative `plugins:` files made absolute."""
    if isinstance(data, dict) and isinstance(data.get("plugins"), list):
        resolved = [resolve_plugin(p, base) if isinstance(p, str) else p for p in data["plugins"]]
        data = {**data, "plugins": resolved}
    return data


def load_plugins(specs: Iterable[str] = ()) -> tuple[str, ...]:
    """Import the installed plugins (once per process), then `specs`; their entries as stored."""
    load_entry_points()
    resolved = tuple(resolve_plugin(spec) for spec in specs)
    for spec in resolved:
        with _blame(f"'{spec}'"):
            if names_file(spec):
                _import_file(Path(spec))
            else:
                importlib.import_module(spec)
    return resolved


def load_entry_points() -> None:
    """Import every module of the `groklab.plugins` entry point group, once per process."""
    global _entry_points
    if isinstance(_entry_points, PluginError):
        raise _entry_points
    if _entry_points or os.environ.get(NO_AUTOLOAD):
        return
    _entry_points = True
    seen = set()
    try:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            dist = getattr(getattr(ep, "dist", None), "name", None)
            where = f"entry point {ep.value}" + (f" of {dist}" if dist else "")
            with _blame(f"'{ep.name}' ({where}; {NO_AUTOLOAD}=1 skips installed plugins)"):
                ep.load()
    except PluginError as err:
        _entry_points = err
        raise


def claim(kind: str, name: object, new: object, old: object | None) -> None:
    """Check that `new` may be registered as the `kind` called `name` where `old` is registered now (None:
    nothing). Registering the same function again (its module imported a second time) replaces it."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(f"a {kind} name must be a non-empty string without surrounding spaces, got {name!r}")
    if old is None or _origin(new) == _origin(old):
        return
    module = getattr(old, "__module__", "") or ""
    if module == "groklab" or module.startswith("groklab."):
        by = f"is a built-in {kind} ({module})"
    else:
        by = f"is already registered by {getattr(sys.modules.get(module), '__file__', None) or module}"
    raise ConfigError(f"{kind} '{name}' {by}; register yours under another name")


def _origin(obj: object) -> tuple[str, str]:
    return getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", None) or repr(obj)


def _import_file(path: Path) -> ModuleType:
    key = str(path)
    if key in _files:
        return _files[key]
    if not path.is_file():
        raise PluginError(
            f"plugin file not found: {path} (a plugins: path is relative to the config file naming it; "
            "a file that moved since a run was made: fix the path in the run's config.yaml)"
        )
    name = "groklab_plugin_" + re.sub(r"\W", "_", path.stem)
    while name in sys.modules:  # another file of the same name
        name += "_"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as `import` does: dataclasses and pickle look a module up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _files[key] = module
    return module


@contextmanager
def _blame(label: str) -> Iterator[None]:
    """Any error importing a plugin as a one-line PluginError naming it."""
    try:
        yield
    except PluginError:
        raise
    except ConfigError as err:  # a registration refused
        raise PluginError(f"plugin {label}: {err}") from None
    except Exception as err:
        raise PluginError(f"plugin {label} failed to import: {_describe(err)}") from None


def _describe(err: Exception) -> str:
    text = " ".join(str(err).split())
    line = f"{type(err).__name__}: {text}" if text else type(err).__name__
    if isinstance(err, SyntaxError):
        return line  # its message names the file and line
    if isinstance(err, ModuleNotFoundError):
        return f"{line} (is it installed, or on PYTHONPATH?)"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith("<")]
    return f"{line} (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else line

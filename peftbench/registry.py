"""The method registry: one decorator, typed entries, helpful errors.

A method is a plain build function registered with :func:`register_method`; third-party
methods register the same way from a module loaded through the ``peftbench.methods`` entry
point group or ``--plugin path.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UnsupportedBackbone, UsageError
from .util import did_you_mean

if TYPE_CHECKING:  # torch is heavy (~2 s): `peftbench report` and `tasks` must not pay for it
    from .method_api import BuildFn


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: BuildFn
    config_cls: type
    description: str
    family: str | None = None  # e.g. "vpt" for vpt_shallow and vpt_deep; None: the name itself
    version: int = 1  # bumped by the plugin when its behaviour changes; part of the run id
    plugin: str | None = None  # the --plugin file (or entry point) that registered it; None: built in

    @property
    def origin(self) -> str:
        """' (plugin FILE)' for a plugin's method, '' for a built-in one: appended to messages about it."""
        return f" (plugin {self.plugin})" if self.plugin else ""

    def blame(self, exc: BaseException) -> str:
        """Where a plugin's code raised ``exc``: ' (raised in plugin FILE, line N, in FUNC)' from the innermost
        frame of the traceback in the plugin's file; the plugin alone if no frame is there; '' if built in."""
        if not self.plugin:
            return ""
        here = Path(self.plugin).resolve()
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == here]
        if not frames:
            return f" (method '{self.name}' from plugin {self.plugin})"
        return f" (raised in plugin {self.plugin}, line {frames[-1].lineno}, in {frames[-1].name})"

    @property
    def family_name(self) -> str:
        return self.family or self.name

    def build_on(self, backbone_name: str, vit: Any, num_classes: int, cfg: Any, ctx: Any) -> Any:
        """``build``, where a method that cannot support the architecture says so in one line (method,
        backbone, reason) at build time, before any training."""
        try:
            return self.build(vit, num_classes, cfg, ctx)
        except UnsupportedBackbone as exc:
            reason = str(exc).removeprefix(f"{self.name}: ")
            raise UsageError(f"{self.name} cannot run on --backbone {backbone_name}: {reason}") from exc

    def search_space(self) -> dict[str, list[Any]]:
        """The knobs a tune searches, with their values: declared as ``field(metadata={"search": [...]})``."""
        return {f.name: list(f.metadata["search"]) for f in dataclasses.fields(self.config_cls)
                if "search" in f.metadata}

    def knobs(self) -> list[dict[str, Any]]:
        """The method's knobs with defaults and help, for `peftbench methods` and the docs."""
        out = []
        for f in dataclasses.fields(self.config_cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append({"name": f.name, "default": default, "help": f.metadata.get("help", ""),
                        "search": f.metadata.get("search")})
        return out


_METHODS: dict[str, MethodSpec] = {}
_builtins_loaded = False
_loading: str | None = None  # the plugin being imported: what its register_method calls are attributed to
_plugins: dict[Path, str] = {}  # plugin files imported, resolved -> as given (each is imported once)


class DuplicateMethod(ValueError):
    """A name registered twice by different code."""


def register_method(name: str, *, config: type, description: str, family: str | None = None, version: int = 1
                    ) -> Callable[[BuildFn], BuildFn]:
    """Register ``build(backbone, num_classes, cfg, ctx) -> nn.Module`` under ``name``.

    ``family`` groups variants (``--methods vpt`` runs every member); ``version`` goes into the run
    id, so bump it when the method's behaviour changes and old records are never reused for it.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"method {name!r}: config must be a dataclass, got {config!r}")
    if not isinstance(version, int) or version < 1:
        raise TypeError(f"method {name!r}: version must be a positive int, got {version!r}")

    def deco(fn: BuildFn) -> BuildFn:
        if name in _METHODS and _METHODS[name].build is not fn:
            old = _METHODS[name]
            by = f"plugin {old.plugin}" if old.plugin else f"the built-in {old.build.__module__}"
            raise DuplicateMethod(f"method {name!r} is already registered (by {by}); give this one another name")
        _METHODS[name] = MethodSpec(name=name, build=fn, config_cls=config, description=description,
                                    family=family, version=version, plugin=_loading)
        return fn

    return deco



def _load_builtins() -> None:
    global _builtins_loaded, _loading
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import pkgutil

    import peftbench.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"peftbench.methods.{info.name}")
    for ep in metadata.entry_points(group="peftbench.methods"):
        _loading = f"entry point {ep.name} ({ep.value})"
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the built-ins
            print(f"warning: plugin entry point {ep.name!r} failed to load: {exc}", file=sys.stderr)
        finally:
            _loading = None


def load_plugin(path: str | Path) -> None:
    """Import a user file that registers methods. This runs the file's code: it is trusted input.

    The built-ins are registered first, so a plugin reusing one of their names is the one refused; the
    same file given twice is imported once."""
    global _loading
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--plugin {path}: no such file")
    if path.resolve() in _plugins:
        return
    _load_builtins()
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]  # two files may share a stem
    spec = importlib.util.spec_from_file_location(f"peftbench_plugin_{path.stem}_{digest}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    _loading = str(path)
    try:
        spec.loader.exec_module(module)
    except DuplicateMethod as exc:
        raise UsageError(f"--plugin {path}: {exc}") from exc
    except Exception as exc:
        raise UsageError(f"--plugin {path}: failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        _loading = None
    _plugins[path.resolve()] = str(path)


def available_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    _load_builtins()
    if name not in _METHODS:
        raise UsageError(f"unknown method '{name}'" + did_you_mean(name, sorted(_METHODS)))
    return _METHODS[name]


def families() -> dict[str, list[str]]:
    """Family name -> its members, for families with a name of their own (``vpt``)."""
    out: dict[str, list[str]] = {}
    for name in available_methods():
        spec = _METHODS[name]
        if spec.family and spec.family != name:
            out.setdefault(spec.family, []).append(name)
    return out


ALL_METHODS = "all"  # in --methods: every registered method


def expand_methods(names: list[str]) -> list[str]:
    """Method or family names -> method names, in the order given, each once (``vpt`` -> vpt_shallow, vpt_deep;
    ``all`` -> every registered method)."""
    fams = families()
    out: list[str] = []
    for name in names:
        if name == ALL_METHODS and name not in _METHODS:
            members = available_methods()
        elif name in fams and name not in _METHODS:
            members = fams[name]
        else:
            if name not in _METHODS:
                raise UsageError(f"unknown method '{name}'" + did_you_mean(name, sorted([*_METHODS, *fams])))
            members = [name]
        out += [m for m in members if m not in out]
    return out

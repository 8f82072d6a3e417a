"""The method registry: one decorator, typed entries, helpful errors.

A method is a plain build function registered with :func:`register_method`; third-party
methods register the same way from a module loaded through the ``peftbench.methods`` entry
point group or ``--plugin path.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
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
            raise ValueError(f"method {name!r} is already registered (by {_METHODS[name].build.__module__})")
        _METHODS[name] = MethodSpec(name=name, build=fn, config_cls=config, description=description,
                                    family=family, version=version)
        return fn

    return deco



def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import pkgutil

    import peftbench.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"peftbench.methods.{info.name}")
    for ep in metadata.entry_points(group="peftbench.methods"):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide the built-ins
            print(f"warning: plugin entry point {ep.name!r} failed to load: {exc}", file=sys.stderr)


def load_plugin(path: str | Path) -> None:
    """Import a user file that registers methods. This runs the file's code: it is trusted input."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--plugin {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"peftbench_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--plugin {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise UsageError(f"--plugin {path}: failed to import: {type(exc).__name__}: {exc}") from exc


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

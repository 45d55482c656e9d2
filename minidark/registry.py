"""Section name -> make function. Built-in layers and plugins register alike.

    @register_layer("connected", "conn")
    def make_connected(options, params): ...

or, for a function defined elsewhere, ``register_layer("prelu", make_prelu)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import LayerNameClash

if TYPE_CHECKING:
    from .layer import Layer

    MakeFn = Callable[..., Layer]  # make_x(options, params) -> Layer

_REGISTRY = {}  # section name -> make function
_ORIGIN = {}  # section name -> "module.function" that registered it


def _origin(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register_layer(*names_and_fn: str | MakeFn) -> Callable[..., Any]:
    """Register a make function under one or more section names.

    ``register_layer("name", make_fn)`` registers now; ``@register_layer("a", "b")``
    decorates. Registering a name twice (a clash with a built-in or another
    plugin) raises :class:`LayerNameClash` naming both.

    The registry is a plain table: it imports no layer. Built-in layers and
    installed plugins are loaded by :func:`minidark.plugins.load_layers`,
    which the cfg builder calls before it looks a section up.
    """
    if names_and_fn and callable(names_and_fn[-1]):
        *names, fn = names_and_fn
        _add(names, fn)
        return fn

    def decorator(fn):
        _add(names_and_fn, fn)
        return fn

    return decorator


def _add(names: tuple | list, fn: MakeFn) -> None:
    if not names:
        raise ValueError("register_layer needs at least one section name")
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"layer name {name!r} must be an identifier")
        if name in ("net", "network"):
            raise ValueError(f"'{name}' is reserved for the [net] section")
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise LayerNameClash(
                f"layer name '{name}' from {_origin(fn)} clashes with "
                f"'{name}' already registered by {_ORIGIN[name]}"
            )
    for name in names:
        _REGISTRY[name] = fn
        _ORIGIN[name] = _origin(fn)


def unregister_layer(name: str) -> None:
    """Remove a registration (for tests and interactive use)."""
    _REGISTRY.pop(name, None)
    _ORIGIN.pop(name, None)


def get_make(name: str) -> MakeFn | None:
    """The make function for a section name, or None."""
    return _REGISTRY.get(name)


def layer_names() -> list[str]:
    return sorted(_REGISTRY)


def suggest(name: str) -> str:
    """' (did you mean [x]?)' or a hint to load a plugin, for an unknown section name."""
    close = difflib.get_close_matches(name, layer_names(), n=1)
    return (
        f" (did you mean [{close[0]}]?)"
        if close
        else "; if it is a plugin layer, load it first (--plugin FILE.py or MODULE)"
    )

"""Loading user layers: plugin files, plugin modules and installed entry points.

A plugin is an ordinary Python module that registers a make function, the
same way every built-in layer does (see docs/extending.md)::

    from minidark import Layer, register_layer

    @register_layer("prelu")
    def make_prelu(options, params): ...

It can reach minidark in three ways; all three end in the same
``register_layer`` call, so a name clash with a built-in or another plugin
is always an error naming both registrants:

1. **Import it** before building the network (library use)::

       import my_layers; net = minidark.load_network("my.cfg")

2. **``--plugin SPEC``** on any CLI command, or ``load_plugins([SPEC])``:
   ``SPEC`` is a path to a ``.py`` file (imported under a stable module name
   derived from its real path, so loading it twice is harmless) or a dotted
   module name importable from ``sys.path`` (``package.module``).

3. **Entry points** of installed distributions, group ``minidark.layers``::

       [project.entry-points."minidark.layers"]
       prelu = "my_package.prelu"            # a module: importing it registers
       swish = "my_package.act:make_swish"   # or a make function, registered as 'swish'

   They are loaded *eagerly*, once, by :func:`load_layers` (called when the
   first cfg is parsed), after the built-ins. Eager
   rather than on-demand so that a clash between an installed plugin and a
   built-in or another plugin is reported even when the cfg at hand does not
   use the name. A broken entry point is a ``PluginError`` naming the entry
   point and its distribution; set ``MINIDARK_NO_ENTRY_POINTS=1`` to skip
   entry points entirely (to run despite a broken install).

Every failure is a ``PluginError`` (a ``MinidarkError``, so the CLI prints it
as one line) that names the spec or the distribution.

**Trusted code only.** Loading a plugin *runs* it, with your permissions: a
``--plugin`` file or module, and every installed ``minidark.layers`` entry
point (merely installing a package that declares one is enough). The CLI's
``--verbose`` lists what was loaded (:func:`loaded_plugins`).
"""

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import traceback

from .errors import MinidarkError

GROUP = "minidark.layers"
DISABLE_ENV = "MINIDARK_NO_ENTRY_POINTS"


class PluginError(MinidarkError):
    """A plugin file, module or entry point that could not be loaded."""


class _State:
    """What has been loaded in this process (reset by tests)."""

    def __init__(self):
        self.files = {}  # real path -> module
        self.sources = {}  # module name -> where it came from, for messages
        self.entry_points_done = False
        self.entry_points_loading = False


_state = _State()


# --------------------------------------------------------------------------
# --plugin SPEC
# --------------------------------------------------------------------------
PLUGIN_HELP = (
    "load layers from a .py file or an importable module (repeatable). This RUNS "
    "its code, as installed minidark.layers entry points run theirs: load trusted "
    "code only"
)


def add_plugin_argument(parser):
    """Add ``--plugin SPEC`` to an argparse parser: its one definition, shared by every
    minidark command and ``python -m minidark.tools.bench``."""
    parser.add_argument("--plugin", action="append", default=[], metavar="SPEC", help=PLUGIN_HELP)
    return parser


def loaded_plugins():
    """Where each plugin loaded in this process came from, in load order:
    'plugin file /abs/x.py', 'plugin module pkg.mod', "entry point 'name = module'
    (group minidark.layers) of distribution 'dist 1.0'"."""
    return list(_state.sources.values())


def load_plugins(specs):
    """Load each ``--plugin`` spec in order; returns the modules."""
    return [load_plugin(spec) for spec in (specs or ())]


def load_plugin(spec):
    """Load one plugin: a ``.py`` file path or a dotted module name."""
    spec = os.fspath(spec)
    _builtins_first()
    if _looks_like_file(spec):
        return _load_file(spec)
    if all(part.isidentifier() for part in spec.split(".")):
        return _load_module(spec)
    raise PluginError(
        f"plugin '{spec}': expected a path to a .py file or a dotted module name (package.module)"
    )


def _looks_like_file(spec):
    return spec.endswith(".py") or os.sep in spec or "/" in spec or os.path.isfile(spec)


def _load_file(spec):
    path = os.path.realpath(spec)
    if path in _state.files:
        return _state.files[path]
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.exists(path) else "no such file"
        raise PluginError(f"plugin '{spec}': {what} ({os.path.abspath(spec)})")
    name = module_name_for(path)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise PluginError(f"plugin '{spec}': cannot import this file (is it a .py file?)")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    _state.sources[name] = f"plugin file {path}"
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        _state.sources.pop(name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise PluginError(f"plugin '{spec}': {_describe(exc, path)}") from exc
    _state.files[path] = module
    return module


def module_name_for(path):
    """The stable module name a plugin file is imported under."""
    path = os.path.realpath(path)
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"minidark_plugin_{stem}_{digest}"


def _load_module(spec):
    already = spec in sys.modules
    try:
        module = importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and (spec + ".").startswith(exc.name + "."):  # the spec itself is missing
            raise PluginError(
                f"plugin '{spec}': no module named '{exc.name}' on sys.path "
                f"(install the package or add its folder to PYTHONPATH; for a "
                f"single file use --plugin path/to/file.py)"
            ) from exc
        raise PluginError(f"plugin '{spec}': {_describe(exc)}") from exc
    except Exception as exc:
        raise PluginError(f"plugin '{spec}': {_describe(exc)}") from exc
    if not already:
        _state.sources.setdefault(module.__name__, f"plugin module {spec}")
    return module


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------
def load_layers():
    """Register the built-in layers, then every installed entry-point plugin.

    Idempotent; the cfg builder calls it before looking up a section.
    """
    from . import layers  # noqa: F401  (importing registers each built-in)

    return load_entry_points()


def load_entry_points():
    """Load every installed ``minidark.layers`` entry point, once per process.

    Called by :func:`load_layers`; returns the entry points loaded by this
    call (empty after the first call).
    """
    if _state.entry_points_done or _state.entry_points_loading:
        return []
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return []
    _state.entry_points_loading = True
    try:
        loaded = [ep for ep in _entry_points() if _load_entry_point(ep)]
        _state.entry_points_done = True  # only after success: a broken one fails every time
    finally:
        _state.entry_points_loading = False
    return loaded


def _entry_points():
    return list(importlib.metadata.entry_points(group=GROUP))


def distribution_of(ep):
    """'name version' of the distribution declaring an entry point."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    try:
        return f"{dist.metadata['Name']} {dist.version}"
    except Exception:
        return getattr(dist, "name", "an unknown distribution")


def _load_entry_point(ep):
    from .registry import _REGISTRY, register_layer

    where = (
        f"entry point '{ep.name} = {ep.value}' (group {GROUP}) of distribution "
        f"'{distribution_of(ep)}'"
    )
    module_name = ep.value.split(":")[0].strip()
    try:
        target = ep.load()
        if (
            callable(target)
            and not isinstance(target, type(sys))
            and target not in _REGISTRY.values()
        ):
            register_layer(ep.name, target)
    except Exception as exc:
        raise PluginError(f"{where}: {_describe(exc)}") from exc
    _state.sources.setdefault(module_name, where)
    return True


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _builtins_first():
    # Built-ins (and installed entry points) register before any plugin, so a
    # plugin reusing their name is the one that gets the clash error.
    load_layers()


def _describe(exc, path=None):
    """One line for an exception: type, message, and where in the plugin."""
    # a MinidarkError already says what it is (a register_layer clash names both)
    text = str(exc) if isinstance(exc, MinidarkError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SyntaxError):
        text = f"SyntaxError: {exc.msg} ({exc.filename}:{exc.lineno})"
    elif path is not None:
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if os.path.realpath(f.filename) == path
        ]
        if frames:
            text += f" ({frames[-1].filename}:{frames[-1].lineno})"
    text = " ".join(text.split())
    # Name where the *earlier* registrant of a clashing name came from.
    for module, source in _state.sources.items():
        if f"already registered by {module}." in text:
            text += f"; {module} was loaded from {source}"
    return text

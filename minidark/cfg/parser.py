"""cfg / YAML -> [Section] -> Network.

Grammar (darknet's ``read_cfg``): ``[type]`` opens a section; ``key=value``
lines belong to the last section; lines starting with ``#`` or ``;`` are
comments; all whitespace (spaces, tabs, and -- unlike darknet -- ``\\r``) is
removed anywhere in a line; the first ``=`` splits key from value; the first
duplicate of a key wins. The first section must be ``[net]`` or ``[network]``.

Deliberate deviations from darknet (which segfaults, aborts or guesses): a
line without ``=``, an empty key or value, an option before any section, a
non-numeric number, an unknown section, activation or policy, and an
impossible geometry are all a ``ConfigError`` naming file, line, section and
key. Unused keys -- in ``[net]`` too -- are warned about with their line
numbers, and are an error with ``strict=True``.

The YAML form is a list of mappings, one per section, with the section name
under ``type``; list values may be YAML lists::

    - type: net
      batch: 128
      steps: [100, 200]
    - type: connected
      output: 10
    - cost:            # nested form, for a section with its own `type` key
        type: masked

Writing YAML keeps every option in order, duplicates included, so
cfg -> YAML -> cfg gives the same sections and the same first-wins values.
"""
import os
import sys
import warnings

from ..errors import ConfigError

REQUIRED = object()  # default marking a key without a darknet default


class Option:
    __slots__ = ("key", "value", "line", "used")

    def __init__(self, key, value, line):
        self.key, self.value, self.line, self.used = key, value, line, False


class Section:
    """One ``[type]`` block with typed, usage-tracked option readers.

    A make function reads its options through these readers; whatever it
    does not read is reported as unused, darknet's "Unused field".
    """

    def __init__(self, type, line=None, file=None, options=None):
        self.type, self.line, self.file = type, line, file
        self.options = list(options or [])

    # -- lookup ------------------------------------------------------------
    def _find(self, key):
        for opt in self.options:
            if opt.key == key:
                opt.used = True
                return opt
        return None

    def has(self, key):
        return any(opt.key == key for opt in self.options)

    def error(self, message, key=None):
        """A ConfigError located at ``key`` (or at the section header)."""
        opt = next((o for o in self.options if o.key == key), None) if key else None
        line = opt.line if opt is not None else self.line
        return ConfigError(message, file=self.file, line=line, section=self.type, key=key)

    def _read(self, key, default, convert, kind):
        opt = self._find(key)
        if opt is None:
            if default is REQUIRED:
                raise self.error(f"required key '{key}' is missing", key)
            return default
        try:
            return convert(opt.value)
        except (ValueError, OverflowError):
            raise ConfigError(f"expected {kind}, got '{opt.value}'", file=self.file,
                              line=opt.line, section=self.type, key=key) from None

    # -- typed readers -------------------------------------------------------
    def int(self, key, default=REQUIRED):
        return self._read(key, default, _to_int, "an integer")

    def float(self, key, default=REQUIRED):
        return self._read(key, default, _to_float, "a number")

    def str(self, key, default=REQUIRED):
        return self._read(key, default, str, "a string")

    def bool(self, key, default=False):
        return bool(self._read(key, int(default), _to_int, "0 or 1"))

    def ints(self, key, default=REQUIRED):
        return self._read(key, default, lambda v: [_to_int(x) for x in _split(v)],
                          "a comma-separated list of integers")

    def floats(self, key, default=REQUIRED):
        return self._read(key, default, lambda v: [_to_float(x) for x in _split(v)],
                          "a comma-separated list of numbers")

    def activation(self, key="activation", default="linear"):
        from ..kernels.activations import ACTIVATIONS
        name = self.str(key, default)
        if name not in ACTIVATIONS:
            raise self.error(f"unknown activation '{name}'; known: "
                             f"{', '.join(sorted(ACTIVATIONS))}", key)
        return name

    def unused(self):
        return [opt for opt in self.options if not opt.used]

    def __repr__(self):
        return f"<Section [{self.type}] line {self.line}: {len(self.options)} options>"


def _split(value):
    items = value.split(",")
    if any(item == "" for item in items):
        raise ValueError(value)
    return items


def _plain(value):
    # Python's int()/float() also take '1_000' and non-ASCII digits; darknet's
    # atoi/atof would read those differently, so they are not numbers here.
    if not value.isascii() or "_" in value:
        raise ValueError(value)
    return value


def _to_int(value):
    return int(_plain(value), 10)


def _to_float(value):
    result = float(_plain(value))
    if result != result:  # NaN is never a meaningful cfg value
        raise ValueError(value)
    return result


# --------------------------------------------------------------------------
# Reading and writing sections
# --------------------------------------------------------------------------
def read_cfg_text(text, file="<string>"):
    """Parse darknet cfg text into a list of Sections."""
    sections = []
    # split on newlines only (files are read with universal newlines): str.splitlines
    # would also split at form feeds, U+0085, U+2028..., shifting line numbers and
    # cutting comments in two
    for number, raw in enumerate(text.split("\n"), start=1):
        line = "".join(raw.split())  # darknet's strip(): whitespace goes everywhere
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ConfigError(f"malformed section header '{raw.strip()}'",
                                  file=file, line=number)
            sections.append(Section(line[1:-1], line=number, file=file))
            continue
        key, sep, value = line.partition("=")
        current = sections[-1].type if sections else None
        if not sections:
            raise ConfigError(f"option '{raw.strip()}' appears before any [section]",
                              file=file, line=number, key=key or None)
        if not sep:
            raise ConfigError(f"malformed line '{raw.strip()}': expected key=value",
                              file=file, line=number, section=current)
        if not key:
            raise ConfigError(f"malformed line '{raw.strip()}': empty key",
                              file=file, line=number, section=current)
        if not value:
            raise ConfigError("empty value", file=file, line=number, section=current, key=key)
        sections[-1].options.append(Option(key, value, number))
    return sections


def read_yaml_text(text, file="<string>"):
    """Parse the YAML form (a list of mappings with ``type``) into Sections."""
    import yaml
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=file,
                          line=mark.line + 1 if mark else None) from None
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise ConfigError("expected a list of sections", file=file, line=root.start_mark.line + 1)
    sections = []
    for node in root.value:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.MappingNode):
            raise ConfigError("each section must be a mapping with a 'type'", file=file, line=line)
        body = node.value[0][1] if len(node.value) == 1 else None
        nested = isinstance(body, yaml.MappingNode) or (
            isinstance(body, yaml.ScalarNode) and body.tag.endswith(":null"))
        if nested:   # - cost: {type: sse}: the key is the section, `type` an option
            section = _yaml_scalar(node.value[0][0], file, line, None)
            pairs = body.value if isinstance(body, yaml.MappingNode) else []
        else:
            section, pairs = None, node.value
        options = []
        for key_node, value_node in pairs:
            key_line = key_node.start_mark.line + 1
            key = _yaml_scalar(key_node, file, key_line, None)
            value = _yaml_value(value_node, file, key_line, key)
            if key == "type" and not nested and section is None:
                section = value
            else:
                options.append(Option(key, value, key_line))
        if section is None:
            raise ConfigError("section has no 'type'", file=file, line=line)
        sections.append(Section(section, line=line, file=file, options=options))
    return sections


def _yaml_scalar(node, file, line, key):
    import yaml
    if not isinstance(node, yaml.ScalarNode) or node.value == "":
        raise ConfigError("expected a plain value", file=file, line=line, key=key)
    value = node.value
    tag = node.tag.rsplit(":", 1)[-1]
    if tag == "bool":
        return "1" if node.value.lower() in ("true", "yes", "on") else "0"
    if tag == "null":
        raise ConfigError("empty value", file=file, line=line, key=key)
    return "".join(value.split())


def _yaml_value(node, file, line, key):
    import yaml
    if isinstance(node, yaml.SequenceNode):
        return ",".join(_yaml_scalar(item, file, line, key) for item in node.value)
    return _yaml_scalar(node, file, line, key)


def read_sections(path):
    """Sections from a ``.cfg`` or ``.yaml``/``.yml`` file."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read cfg file: {exc.strerror}", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("cfg file is not UTF-8 text", file=path) from None
    if path.endswith((".yaml", ".yml")):
        return read_yaml_text(text, file=path)
    return read_cfg_text(text, file=path)


def sections_to_cfg(sections):
    blocks = []
    for section in sections:
        lines = [f"[{section.type}]"] + [f"{o.key}={o.value}" for o in section.options]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _yaml_item(value):
    # Emit numbers as numbers only where they read back as the same text.
    try:
        if str(int(value, 10)) == value:
            return int(value)
    except ValueError:
        pass
    try:
        if repr(float(value)) == value:
            return float(value)
    except ValueError:
        pass
    return value


class _Pairs(list):
    """A YAML mapping as (key, value) pairs: keeps order and duplicate keys."""


def _yaml_option(value):
    items = value.split(",")
    if len(items) > 1 and all(items):   # an empty item ('100,') stays one string
        return [_yaml_item(i) for i in items]
    return _yaml_item(value)


def sections_to_yaml(sections):
    import yaml

    class Dumper(yaml.SafeDumper):
        pass
    Dumper.add_representer(_Pairs, lambda dumper, pairs: dumper.represent_mapping(
        "tag:yaml.org,2002:map", pairs))
    docs = []
    for section in sections:
        options = _Pairs((opt.key, _yaml_option(opt.value)) for opt in section.options)
        if any(opt.key == "type" for opt in section.options):   # [cost] type=sse
            docs.append(_Pairs([(section.type, options)]))
        else:
            docs.append(_Pairs([("type", section.type)] + options))
    return yaml.dump(docs, Dumper=Dumper, sort_keys=False, default_flow_style=None,
                     allow_unicode=True)


def convert_cfg(source, destination):
    """Convert between .cfg and .yaml by the destination's extension."""
    sections = read_sections(source)
    destination = os.fspath(destination)
    text = (sections_to_yaml(sections) if destination.endswith((".yaml", ".yml"))
            else sections_to_cfg(sections))
    with open(destination, "w", encoding="utf-8") as handle:
        handle.write(text)


# --------------------------------------------------------------------------
# Sections -> Network
# --------------------------------------------------------------------------
POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid", "sig", "random")


def parse_net_options(section, net):
    """Read ``[net]`` into ``net`` with darknet's defaults (parse_net_options)."""
    s = section
    batch = s.int("batch", 1)
    net.subdivisions = s.int("subdivisions", 1)
    net.time_steps = s.int("time_steps", 1)
    if net.time_steps < 1:
        raise s.error(f"time_steps must be >= 1, got {net.time_steps}", "time_steps")
    if batch < 1:
        raise s.error(f"batch must be >= 1, got {batch}", "batch")
    if net.subdivisions < 1 or net.subdivisions > batch:
        raise s.error(f"subdivisions must be between 1 and batch ({batch}), "
                      f"got {net.subdivisions}", "subdivisions")
    net.batch = batch // net.subdivisions * net.time_steps
    net.learning_rate = s.float("learning_rate", 0.001)
    net.momentum = s.float("momentum", 0.9)
    net.decay = s.float("decay", 0.0001)
    net.h = s.int("height", 0)
    net.w = s.int("width", 0)
    net.c = s.int("channels", 0)
    dims = (("height", net.h), ("width", net.w), ("channels", net.c))
    for key, size in dims:
        if size < 0:
            raise s.error(f"{key} must be >= 0, got {size}", key)
    if 0 < max(net.h, net.w, net.c) and 0 == min(net.h, net.w, net.c):
        key = next(k for k, size in dims if size == 0)
        raise s.error(f"an image input needs height, width and channels all > 0, got "
                      f"{net.h}x{net.w}x{net.c}; give all three, or only inputs", key)
    net.inputs = s.int("inputs", net.h * net.w * net.c)
    if net.inputs <= 0:
        raise s.error("no input size: give height, width and channels, or inputs")
    if net.h * net.w * net.c not in (0, net.inputs):
        raise s.error(f"inputs={net.inputs} disagrees with height*width*channels="
                      f"{net.h * net.w * net.c}", "inputs")
    net.max_crop = s.int("max_crop", net.w * 2)
    net.min_crop = s.int("min_crop", net.w)
    net.max_ratio = s.float("max_ratio", net.max_crop / net.w if net.w else 0.0)
    net.min_ratio = s.float("min_ratio", net.min_crop / net.w if net.w else 0.0)
    net.center = s.int("center", 0)
    net.clip = s.float("clip", 0.0)
    net.angle = s.float("angle", 0.0)
    net.aspect = s.float("aspect", 1.0)
    net.saturation = s.float("saturation", 1.0)
    net.exposure = s.float("exposure", 1.0)
    net.hue = s.float("hue", 0.0)
    net.flip = s.int("flip", 1)
    net.random = s.int("random", 0)
    net.adam = s.int("adam", 0)
    if net.adam:
        net.B1, net.B2, net.eps = s.float("B1", 0.9), s.float("B2", 0.999), s.float("eps", 1e-7)
    s.int("notruth", 0)  # parsed and unused, as in darknet
    net.backup_every = s.int("backup_every", 1000)
    net.valid_every = s.int("valid_every", 0)

    net.policy = s.str("policy", "constant")
    if net.policy not in POLICIES:
        raise s.error(f"unknown policy '{net.policy}'; known: {', '.join(POLICIES)}", "policy")
    if net.policy == "sig":
        net.policy = "sigmoid"
    net.burn_in = s.int("burn_in", 0)
    net.power = s.float("power", 4.0)
    net.max_batches = s.int("max_batches", 0)
    if net.policy == "step":
        net.step, net.scale = s.int("step", 1), s.float("scale", 1.0)
    elif net.policy == "steps":
        net.steps, net.scales = s.ints("steps"), s.floats("scales")
        if len(net.steps) != len(net.scales):
            raise s.error(f"steps has {len(net.steps)} entries but scales has "
                          f"{len(net.scales)}", "scales")
    elif net.policy in ("exp", "sigmoid"):
        net.gamma = s.float("gamma", 1.0)
        if net.policy == "sigmoid":
            net.step = s.int("step", 1)
    elif net.policy == "poly" and net.max_batches <= 0:
        raise s.error("policy=poly needs max_batches > 0", "max_batches")
    if net.policy == "step" and net.step <= 0:
        raise s.error("step must be > 0", "step")


def report_unused(section, strict):
    unused = section.unused()
    if not unused:
        return
    fields = ", ".join(f"'{o.key} = {o.value}' (line {o.line})" for o in unused)
    if strict:
        first = unused[0]
        raise ConfigError(f"unused field(s) {fields}", file=section.file, line=first.line,
                          section=section.type, key=first.key)
    warnings.warn(f"{section.file}: [{section.type}] line {section.line}: "
                  f"unused field(s) {fields}", ConfigWarning, stacklevel=3)


class ConfigWarning(UserWarning):
    """darknet's "Unused field" message, with line numbers."""


class SizeParams:
    """What a make function knows about its input (darknet's size_params)."""

    def __init__(self, net, index):
        self.net, self.index = net, index
        self.batch, self.inputs = net.batch, net.inputs
        self.h, self.w, self.c = net.h, net.w, net.c
        self.time_steps = net.time_steps

    def require_image(self, section):
        if not (self.h and self.w and self.c):
            raise section.error(f"layer {self.index} [{section.type}] needs an image input "
                                f"(height, width, channels), got {self.inputs} flat inputs")


def parse_network(sections, *, batch=None, strict=False, verbose=True, file=None, seed=None):
    """Build a Network from parsed sections.

    ``batch`` overrides the cfg's batch (and sets subdivisions to 1), so a
    stock cfg can be loaded for inference without allocating for 128 images.
    """
    from ..network import Network
    from ..plugins import load_layers
    from ..registry import get_make, suggest
    load_layers()

    if not sections:
        raise ConfigError("cfg has no sections", file=file)
    head = sections[0]
    if head.type not in ("net", "network"):
        raise ConfigError(f"first section must be [net] or [network], got [{head.type}]",
                          file=head.file, line=head.line, section=head.type)
    net = Network()
    net.cfg_file = head.file
    if seed is not None:
        net.seed(seed)
    parse_net_options(head, net)
    if batch is not None:
        net.batch, net.subdivisions = int(batch), 1
    report_unused(head, strict)

    for index, section in enumerate(sections[1:]):
        if section.type in ("net", "network"):
            raise section.error("[net] may appear only once, as the first section")
        make = get_make(section.type)
        if make is None:
            raise section.error(f"unknown section type [{section.type}]"
                                f"{suggest(section.type)}")
        params = SizeParams(net, index)
        if net.layers:
            prev = net.layers[-1]
            params.h, params.w, params.c = prev.out_h, prev.out_w, prev.out_c
            params.inputs = prev.outputs
        layer = make(section, params)
        layer.index = index
        layer.stopbackward = section.bool("stopbackward", False)
        layer.dontsave = section.bool("dontsave", False)
        layer.dontload = section.bool("dontload", False)
        layer.learning_rate_scale = section.float("learning_rate", 1.0)
        if layer.outputs <= 0:
            raise section.error(f"layer {index} [{section.type}] has no outputs "
                                f"(input {params.w}x{params.h}x{params.c})")
        report_unused(section, strict)
        net.layers.append(layer)
    if not net.layers:
        raise ConfigError("cfg has no layers after [net]", file=head.file, line=head.line,
                          section=head.type)
    net.finalize()
    for layer, section in zip(net.layers, sections[1:]):
        truths = getattr(layer, "truths", layer.outputs)
        if layer.cost is not None and not getattr(layer, "noloss", False) \
                and truths != net.truths:
            raise section.error(
                f"layer {layer.index} [{section.type}] computes a loss against the truth, "
                f"which has {net.truths} values per image (the outputs of layer "
                f"{net.output_layer.index}), but it has {truths}: make it the output layer "
                f"(only [cost] layers may follow) or, for a softmax, set noloss=1")
    if verbose:
        print(net.summary(), file=sys.stderr)
    return net


def parse_network_cfg(path, **kwargs):
    """Read a .cfg/.yaml file and build its Network."""
    return parse_network(read_sections(path), file=os.fspath(path), **kwargs)

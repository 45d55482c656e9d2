"""NetConfig: every ``[net]`` option, with darknet's defaults (parse_net_options).

Each field is named by its cfg key, so the dataclass is also the list of
keys ``[net]`` knows (a key one typo away from a field is an error). Fields
of a policy that is not in use keep their defaults and are not read (so
darknet's unused-key warning still names them). ``read_net_config`` reads
and validates a ``[net]`` Section; every range below is checked at parse
time, so training never meets a value its math cannot use.

The Network keeps the sizes it computes from these (``net.batch`` is
``batch / subdivisions * time_steps``, darknet's ``net->batch``; ``net.h``,
``net.w``, ``net.c``, ``net.inputs``) and reads the rest through
``net.config``.
"""

from dataclasses import dataclass, field, fields

POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid", "sig", "random")


@dataclass
class NetConfig:
    # --- sizes
    batch: int = 1  # images per update (before the division by subdivisions)
    subdivisions: int = 1  # mini-batches per update; each holds batch / subdivisions images
    time_steps: int = 1  # recurrent steps per sequence (a mini-batch holds that many rows each)
    height: int = 0  # input image height (0: a flat input of `inputs` values)
    width: int = 0  # input image width
    channels: int = 0  # input image channels
    inputs: int = 0  # values per input row (default height * width * channels)
    # --- SGD
    learning_rate: float = 0.001  # base rate, > 0
    momentum: float = 0.9  # in [0, 1)
    decay: float = 0.0001  # L2 weight decay, >= 0
    # --- augmentation (classifier training)
    max_crop: int = 0  # largest crop side, pixels (default 2 * width)
    min_crop: int = 0  # smallest crop side, pixels (default width)
    max_ratio: float = 0.0  # max_crop / width unless given
    min_ratio: float = 0.0  # min_crop / width unless given
    center: int = 0  # darknet: centred crops (read, not implemented)
    clip: float = 0.0  # darknet: gradient clipping (read, not implemented)
    angle: float = 0.0  # random rotation, degrees, in [-360, 360]
    aspect: float = 1.0  # random aspect-ratio scale, > 0
    saturation: float = 1.0  # random saturation scale, > 0
    exposure: float = 1.0  # random exposure scale, > 0
    hue: float = 0.0  # random hue shift, in [0, 1]
    flip: int = 1  # random horizontal flips (0 or 1)
    random: int = 0  # multi-scale: resize every 40 iterations (streamed classifier training)
    notruth: int = 0  # parsed and unused, as in darknet
    # --- Adam (optim/adam.py, darknet's GPU update); momentum is then unused
    adam: int = 0  # 1: train with Adam instead of SGD
    B1: float = 0.9  # decay of the first moment
    B2: float = 0.999  # decay of the second moment
    eps: float = 1e-7  # added to sqrt(second moment)
    # --- schedule
    max_batches: int = 0  # updates to train; 0: until interrupted
    backup_every: int = 1000  # updates between checkpoints; 0: none
    valid_every: int = 0  # updates between validations; 0: none
    policy: str = "constant"  # learning-rate policy (minidark/optim/policy.py)
    burn_in: int = 0  # updates of warm-up: rate * (n / burn_in) ** power
    power: float = 4.0  # exponent of poly, random and burn-in
    step: int = 1  # policy=step: updates per decay; policy=sigmoid: the midpoint
    scale: float = 1.0  # policy=step: factor per step
    steps: list = field(default_factory=list)  # policy=steps: updates at which...
    scales: list = field(default_factory=list)  # ...the rate is multiplied by these
    gamma: float = 1.0  # policy=exp: rate * gamma ** n; policy=sigmoid: slope

    @classmethod
    def keys(cls):
        """Every cfg key [net] knows."""
        return {f.name for f in fields(cls)}


def read_net_config(s):
    """A validated NetConfig from the ``[net]`` Section ``s`` (darknet's defaults)."""
    c = NetConfig()
    c.batch = s.int("batch", 1, min=1)
    c.subdivisions = s.int("subdivisions", 1, min=1)
    c.time_steps = s.int("time_steps", 1, min=1)
    if c.subdivisions > c.batch:
        raise s.error(
            f"subdivisions must be between 1 and batch ({c.batch}), got {c.subdivisions}",
            "subdivisions",
        )
    c.learning_rate = s.float("learning_rate", c.learning_rate, above=0)
    c.momentum = s.float("momentum", c.momentum, min=0, below=1)
    c.decay = s.float("decay", c.decay, min=0)
    if c.learning_rate * c.decay >= 1:  # each update scales the weights by 1 - rate * decay
        raise s.error(
            f"learning_rate x decay = {c.learning_rate * c.decay:g} must be < 1: each update "
            f"scales the weights by 1 - learning_rate x decay",
            "decay" if s.has("decay") else "learning_rate",
        )
    _read_input_size(s, c)
    _read_augmentation(s, c)
    c.random = int(s.bool("random", False))
    c.adam = int(s.bool("adam", False))
    if c.adam:
        c.B1 = s.float("B1", c.B1, min=0, below=1)
        c.B2 = s.float("B2", c.B2, min=0, below=1)
        c.eps = s.float("eps", c.eps, above=0)
    c.notruth = s.int("notruth", 0)
    c.backup_every = s.int("backup_every", c.backup_every, min=0, note=" (0: no checkpoints)")
    c.valid_every = s.int("valid_every", c.valid_every, min=0, note=" (0: no validation)")
    _read_schedule(s, c)
    return c


def _read_input_size(s, c):
    c.height = s.int("height", 0, min=0)
    c.width = s.int("width", 0, min=0)
    c.channels = s.int("channels", 0, min=0)
    dims = {"height": c.height, "width": c.width, "channels": c.channels}
    pixels = c.height * c.width * c.channels
    if max(dims.values()) > 0 and min(dims.values()) == 0:
        key = next(k for k, size in dims.items() if size == 0)
        raise s.error(
            f"an image input needs height, width and channels all > 0, got "
            f"{c.height}x{c.width}x{c.channels}; give all three, or only inputs",
            key,
        )
    c.inputs = s.int("inputs", pixels)
    if c.inputs <= 0:
        raise s.error(
            "no input size: give height, width and channels, or inputs",
            "inputs" if s.has("inputs") else None,
        )
    if pixels >= 2**31:
        raise s.error(
            f"height*width*channels = {pixels:,} is beyond darknet's int range (|n| < 2^31)",
            "width",
        )
    if pixels not in (0, c.inputs):
        raise s.error(f"inputs={c.inputs} disagrees with height*width*channels={pixels}", "inputs")


def _read_augmentation(s, c):
    image = c.width > 0
    c.max_crop = s.int("max_crop", c.width * 2, min=1)
    c.min_crop = s.int("min_crop", c.width, min=1)
    if image and c.max_crop < c.min_crop:
        raise s.error(
            f"max_crop ({c.max_crop}) must be >= min_crop ({c.min_crop})",
            "max_crop" if s.has("max_crop") else "min_crop",
        )
    c.max_ratio = s.float("max_ratio", c.max_crop / c.width if image else 0.0, above=0)
    c.min_ratio = s.float("min_ratio", c.min_crop / c.width if image else 0.0, above=0)
    if c.max_ratio < c.min_ratio:
        raise s.error(
            f"max_ratio ({c.max_ratio:g}) must be >= min_ratio ({c.min_ratio:g})",
            "max_ratio" if s.has("max_ratio") else "min_ratio",
        )
    c.center = int(s.bool("center", False))
    c.clip = s.float("clip", 0.0, min=0)
    c.angle = s.float("angle", 0.0, min=-360, max=360)  # degrees
    c.aspect = s.float("aspect", 1.0, above=0)
    c.saturation = s.float("saturation", 1.0, above=0)
    c.exposure = s.float("exposure", 1.0, above=0)
    c.hue = s.float("hue", 0.0, min=0, max=1)
    c.flip = int(s.bool("flip", True))


def _read_schedule(s, c):
    c.policy = s.str("policy", "constant")
    if c.policy not in POLICIES:
        raise s.error(f"unknown policy '{c.policy}'; known: {', '.join(POLICIES)}", "policy")
    if c.policy == "sig":
        c.policy = "sigmoid"
    c.burn_in = s.int("burn_in", 0, min=0)
    c.power = s.float("power", 4.0)
    c.max_batches = s.int("max_batches", 0, min=0, note=" (0: train until interrupted)")
    if c.power < 0 and (c.policy in ("poly", "random") or c.burn_in):
        use = f"policy={c.policy}" if c.policy in ("poly", "random") else "burn_in"
        raise s.error(
            f"power must be >= 0 with {use} (a negative power divides by zero "
            f"when the base reaches 0), got {c.power:g}",
            "power",
        )
    if c.policy == "step":
        c.step = s.int("step", 1, min=1)
        c.scale = s.float("scale", 1.0, min=0)
    elif c.policy == "steps":
        c.steps = s.ints("steps", min=0, increasing=True)
        c.scales = s.floats("scales", min=0)
        if len(c.steps) != len(c.scales):
            raise s.error(
                f"steps has {len(c.steps)} entries but scales has {len(c.scales)}", "scales"
            )
    elif c.policy == "exp":
        c.gamma = s.float("gamma", 1.0, above=0)
    elif c.policy == "sigmoid":
        c.gamma = s.float("gamma", 1.0)
        c.step = s.int("step", 1)
    elif c.policy == "poly" and c.max_batches <= 0:
        raise s.error("policy=poly needs max_batches > 0", "max_batches")

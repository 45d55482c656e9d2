"""Values the math cannot use, misspelt keys and keys read but not implemented:
each is caught at parse time with one line naming file, line, section and key."""

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minidark.cfg import ConfigWarning, NetConfig, parse_network, read_cfg_text
from minidark.cfg.grammar import edit_distance, near_miss
from minidark.errors import ConfigError

NET = "[net]\nbatch=2\nheight=8\nwidth=8\nchannels=1\n"
CONV = "[convolutional]\nfilters=2\nsize=3\nstride=1\npad=1\nactivation=leaky\n"


def build(text, **kwargs):
    kwargs.setdefault("verbose", False)
    return parse_network(read_cfg_text(text, file="x.cfg"), file="x.cfg", **kwargs)


def refused(text, key, fragment, section=None, **kwargs):
    """The ConfigError of ``text``: one line, at the line of ``key``, quoting ``fragment``."""
    with pytest.raises(ConfigError) as info:
        build(text, **kwargs)
    error, message = info.value, str(info.value)
    assert "\n" not in message and message.startswith("x.cfg:")
    assert error.key == key, message
    line = next(
        i for i, text_line in enumerate(text.split("\n"), 1) if text_line.startswith(f"{key}=")
    )
    assert error.line == line, message
    if section:
        assert error.section == section
    assert fragment in message, message
    return message


# --------------------------------------------------------------------------
# [net] ranges
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "option, fragment",
    [
        ("learning_rate=0", "must be > 0"),
        ("learning_rate=-0.1", "must be > 0"),
        ("learning_rate=inf", "finite"),
        ("learning_rate=nan", "finite"),
        ("learning_rate=1e-50", "0 in float32"),
        ("learning_rate=1e39", "float32"),
        ("momentum=1", "must be < 1"),
        ("momentum=-0.1", "must be >= 0"),
        ("decay=-1e-4", "must be >= 0"),
        ("decay=65536", "learning_rate x decay"),
        ("max_batches=-1", "must be >= 0 (0: train until interrupted)"),
        ("valid_every=-1", "must be >= 0 (0: no validation)"),
        ("backup_every=-1", "must be >= 0 (0: no checkpoints)"),
        ("min_crop=0", "must be >= 1"),
        ("max_crop=99999999999999999999", "int range"),
        ("max_crop=4", "max_crop (4) must be >= min_crop (8)"),
        ("angle=-1e20", "must be >= -360"),
        ("aspect=0", "must be > 0"),
        ("hue=2", "must be <= 1"),
        ("exposure=-1", "must be > 0"),
        ("flip=-1", "0 or 1"),
        ("flip=1e20", "0 or 1"),
        ("flip=2", "0 or 1"),
        ("random=5", "0 or 1"),
        ("burn_in=-3", "must be >= 0"),
        ("time_steps=99999999999", "int range"),
        ("subdivisions=1e3", "an integer"),
    ],
)
def test_net_values_out_of_range(option, fragment):
    key = option.split("=")[0]
    refused(f"{NET}{option}\n{CONV}", key, fragment, "net")


@pytest.mark.parametrize(
    "policy, option, key, fragment",
    [
        ("poly", "power=-1\nmax_batches=10", "power", "power must be >= 0 with policy=poly"),
        ("random", "power=-0.5", "power", "power must be >= 0 with policy=random"),
        ("constant", "burn_in=10\npower=-2", "power", "with burn_in"),
        ("poly", "max_batches=0", "max_batches", "needs max_batches > 0"),
        ("steps", "steps=100,50,200\nscales=.1,.1,.1", "steps", "must not decrease"),
        ("steps", "steps=-5\nscales=.1", "steps", "must be >= 0"),
        ("steps", "steps=5\nscales=-1", "scales", "must be >= 0"),
        ("step", "step=0", "step", "must be >= 1"),
        ("exp", "gamma=0", "gamma", "must be > 0"),
    ],
)
def test_policy_values_out_of_range(policy, option, key, fragment):
    refused(f"{NET}policy={policy}\n{option}\n{CONV}", key, fragment, "net")


def test_zero_means_never_or_forever_and_is_accepted():
    net = build(f"{NET}max_batches=0\nvalid_every=0\nbackup_every=0\n{CONV}")
    assert (net.config.max_batches, net.config.valid_every, net.config.backup_every) == (0, 0, 0)


def test_poly_with_zero_power_trains_to_the_last_iteration():
    net = build(f"{NET}policy=poly\npower=0\nmax_batches=4\n{CONV}")
    net.seen = 4 * net.images_per_update
    assert net.current_rate() == pytest.approx(net.config.learning_rate)


# --------------------------------------------------------------------------
# Layer ranges
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "section, key, fragment",
    [
        ("[convolutional]\nstride=99999999999999999999999", "stride", "int range"),
        ("[convolutional]\nbatch_normalize=-1", "batch_normalize", "0 or 1"),
        ("[convolutional]\nbatch_normalize=1e20", "batch_normalize", "0 or 1"),
        ("[convolutional]\npad=-1", "pad", "0 or 1"),
        ("[local]\npad=1000000", "pad", "0 or 1"),
        ("[crop]\ncrop_height=4\ncrop_width=4\nexposure=-1", "exposure", "must be > 0"),
        ("[softmax]\ntemperature=1e-50", "temperature", "0 in float32"),
        ("[softmax]\ntemperature=0", "temperature", "must be > 0"),
        ("[softmax]\ntemperature=inf", "temperature", "finite"),
        ("[maxpool]\nsize=2\nstride=1\npadding=9", "padding", "no input cell"),
        ("[maxpool]\nsize=100000000000000000000", "size", "int range"),
        ("[maxpool]\nsize=2000000000", "size", "above 128"),
        ("[dropout]\nprobability=nan", "probability", "finite"),
        ("[connected]\noutput=2\nlearning_rate=-1", "learning_rate", "must be >= 0"),
    ],
)
def test_layer_values_out_of_range(section, key, fragment):
    refused(f"{NET}{section}\n", key, fragment)


def test_large_maxpool_size_is_refused_fast():
    import time

    start = time.perf_counter()
    for size in ("129", "2147483647", "1" + "0" * 20):
        with pytest.raises(ConfigError, match=r"maxpool.*size"):
            build(f"{NET}[maxpool]\nsize={size}\n")
    assert time.perf_counter() - start < 1.0


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(["1e-50", "-0", "1e39", "-1e39", "0.0", "2", "-1"]),
    )
)
def test_any_momentum_is_a_network_or_a_clear_error(value):
    """momentum: a float in [0, 1) that stays one in float32, or a one-line error."""
    text = f"{NET}momentum={value}\n{CONV}"
    try:
        net = build(text)
    except ConfigError as error:
        assert error.key == "momentum" and error.line == 6 and "\n" not in str(error)
        return
    assert 0 <= net.config.momentum < 1 and math.isfinite(net.config.momentum)


# --------------------------------------------------------------------------
# Misspelt, unknown and unimplemented keys
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, key, meant",
    [
        (f"{NET}learnin_rate=0.1\n{CONV}", "learnin_rate", "learning_rate"),
        (f"{NET}momentun=0.5\n{CONV}", "momentun", "momentum"),
        (f"{NET}bacth=4\n{CONV}", "bacth", "batch"),
        (f"{NET}[convolutional]\nfilters=2\nactivaton=relu\n", "activaton", "activation"),
        (f"{NET}[convolutional]\nfliters=2\n", "fliters", "filters"),
        (f"{NET}[connected]\noutputs=2\n", "outputs", "output"),
        (f"{NET}[maxpool]\nsize=2\nstirde=2\n", "stirde", "stride"),
        (f"{NET}policy=steps\nsteps=1\nscales=.1\nstpes=2\n{CONV}", "stpes", "steps"),
    ],
)
def test_a_typo_of_a_known_key_is_an_error(text, key, meant):
    message = refused(text, key, f"did you mean '{meant}'?")
    assert f"unknown key '{key}'" in message


def test_a_key_of_another_policy_is_only_unused():
    # 'scale' is a [net] key (policy=step), so under policy=constant it is unused, not a typo
    with pytest.warns(ConfigWarning, match="'scale = 0.5'"):
        build(f"{NET}scale=0.5\n{CONV}")


def test_unknown_keys_far_from_any_known_key_warn_once_with_long_values_cut():
    long_value = "x" * 500
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(f"{NET}mosaic=1\nletter_box={long_value}\n{CONV}dilation=2\n")
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert len(messages) == 2  # one per section
    net_message = next(m for m in messages if "[net]" in m)
    assert "'mosaic = 1'" in net_message and "(500 characters)" in net_message
    assert len(net_message) < 300
    assert "'dilation = 2'" in next(m for m in messages if "[convolutional]" in m)


def test_warnings_escape_control_characters():
    with pytest.warns(ConfigWarning) as record:
        build(f"{NET}mosaic=\x1b[2J\n{CONV}")
    assert "\\x1b[2J" in str(record[0].message) and str(record[0].message).isprintable()


def test_known_keys_come_from_what_make_reads():
    # a plugin's keys are known exactly as a built-in's: by what its make function reads
    from minidark.layer import Layer
    from minidark.registry import register_layer, unregister_layer

    def make_scaled(options, params):
        factor = options.float("factor", 1.0)
        return Layer(
            type="scaled",
            batch=params.batch,
            inputs=params.inputs,
            outputs=params.inputs,
            out_c=params.inputs,
            out_h=1,
            out_w=1,
            forward=lambda l, net: None,
            backward=lambda l, net: None,
            desc=f"{factor}",
        )

    register_layer("scaled", make_scaled)
    try:
        refused(f"{NET}[scaled]\nfactr=2\n", "factr", "did you mean 'factor'?")
    finally:
        unregister_layer("scaled")


def test_edit_distance_and_near_miss():
    assert edit_distance("learnin_rate", "learning_rate") == 1
    assert edit_distance("bacth", "batch") == 1  # a transposition is one edit
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "abc") == 0
    assert near_miss("learnng_rte", {"learning_rate"}) == "learning_rate"  # 2 edits, long
    assert near_miss("mosaic", {"momentum", "scale"}) is None
    assert near_miss("ab", {"abc"}) is None  # too short to guess


@pytest.mark.parametrize(
    "option, reason",
    [
        ("clip=0.5", "not clipped"),
        ("center=1", "centred"),
    ],
)
def test_read_but_not_implemented_keys_warn_and_fail_with_strict(option, reason):
    text = f"{NET}{option}\n{CONV}"
    with pytest.warns(ConfigWarning, match=f"read but not implemented: .*{reason}"):
        build(text)
    refused(text, option.split("=")[0], "read but not implemented", strict=True)


def test_not_implemented_key_at_its_default_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(f"{NET}adam=0\nclip=0\n{CONV}")


def test_convolutional_binary_is_not_implemented():
    with pytest.warns(ConfigWarning, match="binary = 1.*full precision"):
        build(f"{NET}[conv]\nfilters=2\nbinary=1\n")


# --------------------------------------------------------------------------
# NetConfig
# --------------------------------------------------------------------------
POLICY_OPTIONS = {
    "constant": "",
    "step": "step=3\nscale=.5",
    "steps": "steps=1,2\nscales=.5,.5",
    "exp": "gamma=.9",
    "poly": "power=2\nmax_batches=9",
    "sigmoid": "gamma=.1\nstep=4",
    "random": "power=1",
}


def test_every_netconfig_field_is_a_key_read_by_some_configuration():
    """The dataclass is the list of [net] keys: none that nothing reads."""
    read = set()
    for policy, options in POLICY_OPTIONS.items():
        sections = read_cfg_text(f"{NET}policy={policy}\nadam=1\n{options}\n{CONV}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parse_network(sections, verbose=False)
        read |= sections[0].queried
    assert NetConfig.keys() <= read, NetConfig.keys() - read


def test_images_per_update_and_the_batch_override():
    net = build("[net]\nbatch=12\nsubdivisions=3\ninputs=4\n[softmax]\n")
    assert (net.batch, net.subdivisions, net.images_per_update) == (4, 3, 12)
    assert net.config.batch == 12
    net = build("[net]\nbatch=12\nsubdivisions=3\ninputs=4\n[softmax]\n", batch=1)
    assert (net.batch, net.subdivisions, net.images_per_update) == (1, 1, 1)

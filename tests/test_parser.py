"""The cfg / YAML parser: darknet's grammar, typed readers and defaults, one
test per kind of ConfigError (each asserting file, line, section and key),
unused-key warnings, cfg <-> YAML round trips, and a hypothesis fuzz test
that arbitrary text only ever gives a Network or a ConfigError."""

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minidark
from minidark.cfg import (
    ConfigWarning,
    Option,
    Section,
    convert_cfg,
    parse_network,
    read_cfg_text,
    read_sections,
    read_yaml_text,
    sections_to_cfg,
    sections_to_yaml,
)
from minidark.errors import ConfigError

from conftest import ROOT, write_cfg

MLP_CFG = ROOT / "cfg" / "mnist_mlp.cfg"
SMALL = "[net]\ninputs=4\n[softmax]\n"


def build(text, **kwargs):
    """Network from cfg text, as parse_network_cfg would build it from a file 'x.cfg'."""
    kwargs.setdefault("verbose", False)
    return parse_network(read_cfg_text(text, file="x.cfg"), file="x.cfg", **kwargs)


def config_error(text, **kwargs):
    with pytest.raises(ConfigError) as info:
        build(text, **kwargs)
    return info.value


def pairs(section):
    return [(o.key, o.value) for o in section.options]


def text_of(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def shape(sections):
    return [(s.type, pairs(s)) for s in sections]


# --------------------------------------------------------------------------
# Grammar
# --------------------------------------------------------------------------
def test_whitespace_is_stripped_everywhere():
    sections = read_cfg_text(" [ net ] \n\tmax _batches = 5 0\t\nna mes = my file.txt \n")
    assert [s.type for s in sections] == ["net"]
    assert pairs(sections[0]) == [("max_batches", "50"), ("names", "myfile.txt")]


def test_crlf_line_endings_are_read_like_lf():
    assert shape(read_cfg_text("[net]\r\nbatch=2\r\n")) == [("net", [("batch", "2")])]


def test_only_newlines_end_lines():
    # a form feed or U+2028 inside a comment does not end it (nor shift line numbers)
    sections = read_cfg_text("# a\u2028b\x0cc\u0085d\n[net]\ninputs=2\n")
    assert sections[0].line == 2 and sections[0].options[0].line == 3


def test_comments_only_at_line_start():
    text = "# comment\n; also a comment\n[net]\n  # indented comment\nbatch=2\nactivation=leaky#x\n"
    sections = read_cfg_text(text)
    assert pairs(sections[0]) == [("batch", "2"), ("activation", "leaky#x")]


def test_blank_lines_ignored_and_line_numbers_kept():
    sections = read_cfg_text("\n\n[net]\n\nbatch=2\n")
    assert sections[0].line == 3
    assert sections[0].options[0].line == 5


def test_first_equals_splits_key_from_value():
    assert pairs(read_cfg_text("[net]\na=b=c\n")[0]) == [("a", "b=c")]


def test_first_duplicate_wins_and_later_is_warned_unused():
    text = "[net]\ninputs=6\n[softmax]\ngroups=2\ngroups=3\n"
    with pytest.warns(ConfigWarning) as record:
        net = build(text)
    assert net.layers[0].groups == 2
    message = str(record[0].message)
    assert "'groups = 3' (line 5)" in message and "[softmax]" in message


def test_net_and_network_both_accepted_as_first_section():
    for head in ("net", "network"):
        net = build(f"[{head}]\ninputs=4\n[softmax]\n")
        assert net.inputs == 4 and len(net.layers) == 1


def test_aliases_build_the_same_layer_types():
    net = build("[net]\ninputs=4\n[conn]\noutput=4\n[soft]\n")
    assert [l.type for l in net.layers] == ["connected", "softmax"]


# --------------------------------------------------------------------------
# Typed readers and defaults
# --------------------------------------------------------------------------
def make_section(**values):
    return Section(
        "test",
        line=1,
        file="t.cfg",
        options=[Option(k, v, i + 2) for i, (k, v) in enumerate(values.items())],
    )


def test_typed_readers():
    s = make_section(
        i="-3", f=".1", e="1e-3", name="leaky", flag="1", lst="100,200", fl=".1,2,3e1", act="relu"
    )
    assert s.int("i") == -3 and isinstance(s.int("i"), int)
    assert s.float("f") == pytest.approx(0.1) and s.float("e") == pytest.approx(1e-3)
    assert s.float("i") == -3.0
    assert s.str("name") == "leaky"
    assert s.bool("flag") is True and s.bool("nope") is False
    assert s.ints("lst") == [100, 200]
    assert s.floats("fl") == pytest.approx([0.1, 2.0, 30.0])
    assert s.activation("act") == "relu"
    assert s.int("missing", 7) == 7 and s.str("missing", None) is None
    assert s.activation("missing_act", "logistic") == "logistic"
    assert s.unused() == []


@pytest.mark.parametrize(
    "reader, value, kind",
    [
        ("int", "abc", "an integer"),
        ("int", "1.5", "an integer"),
        ("int", "1_000", "an integer"),
        ("int", "\u0661\u0662", "an integer"),
        ("float", "x1", "a number"),
        ("float", "nan", "a number"),
        ("bool", "true", "0 or 1"),
        ("ints", "1,,2", "comma-separated list of integers"),
        ("ints", "1,a", "comma-separated list of integers"),
        ("floats", ".1,", "comma-separated list of numbers"),
    ],
)
def test_typed_reader_rejects(reader, value, kind):
    s = make_section(pad="0", key=value)
    with pytest.raises(ConfigError) as info:
        getattr(s, reader)("key")
    error = info.value
    assert kind in str(error) and f"'{value}'" in str(error)
    assert (error.file, error.line, error.section, error.key) == ("t.cfg", 3, "test", "key")


def test_required_key_missing_names_the_key():
    with pytest.raises(ConfigError, match="required key 'steps'") as info:
        make_section().ints("steps")
    assert info.value.key == "steps" and info.value.line == 1


def test_net_defaults_are_darknets():
    net = build("[net]\ninputs=10\n[softmax]\n")
    expected = dict(
        batch=1,
        subdivisions=1,
        time_steps=1,
        learning_rate=0.001,
        momentum=0.9,
        decay=0.0001,
        policy="constant",
        burn_in=0,
        power=4.0,
        max_batches=0,
        height=0,
        width=0,
        channels=0,
        flip=1,
        angle=0.0,
        aspect=1.0,
        saturation=1.0,
        exposure=1.0,
        hue=0.0,
        center=0,
        random=0,
        adam=0,
        backup_every=1000,
        valid_every=0,
    )
    for name, value in expected.items():
        assert getattr(net.config, name) == pytest.approx(value), name
    assert (net.batch, net.subdivisions, net.time_steps, net.h, net.w, net.c) == (1, 1, 1, 0, 0, 0)
    assert net.learning_rate == net.config.learning_rate  # darknet's names, read-only
    with pytest.raises(AttributeError, match=r"net\.config\.momentum"):
        net.momentum = 0.5


def test_net_image_defaults_and_batch_division():
    net = build(
        "[net]\nbatch=64\nsubdivisions=4\nheight=28\nwidth=28\nchannels=3\npolicy=step\n[softmax]\n"
    )
    assert (net.batch, net.subdivisions, net.inputs) == (16, 4, 28 * 28 * 3)
    assert net.images_per_update == 64
    c = net.config
    assert (c.max_crop, c.min_crop) == (56, 28)
    assert (c.max_ratio, c.min_ratio) == (2.0, 1.0)
    assert (c.step, c.scale) == (1, 1.0)


def test_policy_specific_defaults():
    assert build("[net]\ninputs=4\npolicy=exp\n[softmax]\n").config.gamma == 1.0
    sig = build("[net]\ninputs=4\npolicy=sig\n[softmax]\n").config
    assert (sig.policy, sig.gamma, sig.step) == ("sigmoid", 1.0, 1)


def test_layer_defaults_are_darknets():
    net = build("[net]\ninputs=4\n[connected]\n[dropout]\n[activation]\n[softmax]\n[cost]\n")
    conn, drop, act, soft, cost = net.layers
    assert (conn.outputs, conn.activation, conn.batch_normalize) == (1, "logistic", False)
    assert drop.probability == 0.5
    assert act.activation == "linear"
    assert (soft.groups, soft.temperature, soft.noloss, soft.spatial) == (1, 1.0, False, False)
    assert (cost.cost_type, cost.scale) == ("sse", 1.0)
    assert conn.learning_rate_scale == 1.0 and not conn.stopbackward


# --------------------------------------------------------------------------
# ConfigErrors: one per kind, each naming file, line, section and key
# --------------------------------------------------------------------------
def located(error, line, section=None, key=None, file="x.cfg"):
    assert (error.file, error.line, error.section, error.key) == (file, line, section, key)
    text = str(error)
    assert text.startswith(f"{file}:{line}")
    if section:
        assert f"[{section}]" in text
    if key:
        assert f"'{key}'" in text
    return text


def test_error_malformed_line():
    error = config_error("[net]\ninputs=4\nbatch 64\n[softmax]\n")
    text = located(error, 3, "net")
    assert "malformed line 'batch 64'" in text and "key=value" in text


def test_error_malformed_empty_key():
    error = config_error("[net]\ninputs=4\n=5\n[softmax]\n")
    assert "empty key" in located(error, 3, "net")


def test_error_malformed_section_header():
    error = config_error("[net]\ninputs=4\n[softmax\n")
    assert "malformed section header" in located(error, 3)


def test_error_non_numeric_value():
    error = config_error("[net]\ninputs=4\nbatch=abc\n[softmax]\n")
    assert "expected an integer, got 'abc'" in located(error, 3, "net", "batch")
    error = config_error("[net]\ninputs=4\n[dropout]\nprobability=half\n")
    assert "expected a number, got 'half'" in located(error, 4, "dropout", "probability")


def test_error_unknown_section_type_with_did_you_mean():
    error = config_error("[net]\ninputs=4\n[conected]\noutput=2\n")
    text = located(error, 3, "conected")
    assert "unknown section type [conected]" in text
    assert "did you mean [connected]?" in text


def test_error_unknown_section_without_close_match():
    error = config_error("[net]\ninputs=4\n[zzzzqqq]\n")
    assert "did you mean" not in located(error, 3, "zzzzqqq")


def test_error_missing_net():
    error = config_error("# no net\n[connected]\noutput=2\n")
    assert "first section must be [net] or [network]" in located(error, 2, "connected")


def test_error_empty_cfg(tmp_path):
    path = write_cfg(tmp_path, "# only a comment\n\n", "empty.cfg")
    with pytest.raises(ConfigError, match="no sections") as info:
        minidark.load_network(path)
    assert info.value.file == path


def test_error_net_without_layers():
    error = config_error("[net]\ninputs=4\n# no layers\n")
    assert "no layers" in located(error, 1, "net")


def test_error_second_net():
    error = config_error("[net]\ninputs=4\n[softmax]\n[network]\nbatch=2\n")
    assert "only once" in located(error, 4, "network")


def test_error_option_before_any_section():
    error = config_error("batch=2\n[net]\ninputs=4\n[softmax]\n")
    assert "before any [section]" in located(error, 1, None, "batch")


def test_error_empty_value():
    error = config_error("[net]\ninputs=4\n[connected]\noutput=\n")
    assert "empty value" in located(error, 4, "connected", "output")


def test_error_impossible_geometry_groups():
    error = config_error("[net]\ninputs=10\n[softmax]\ngroups=3\n")
    assert "divisible by groups (3)" in located(error, 4, "softmax", "groups")


def test_error_impossible_geometry_inputs_disagree():
    error = config_error("[net]\nheight=2\nwidth=2\nchannels=1\ninputs=5\n[softmax]\n")
    assert "disagrees" in located(error, 5, "net", "inputs")


@pytest.mark.parametrize(
    "line, message",
    [
        ("batch=0", "batch must be >= 1"),
        ("subdivisions=3", "subdivisions must be between"),
        ("time_steps=-1", "time_steps must be >= 1"),
        ("height=-2", "height must be >= 0"),
    ],
)
def test_error_bad_net_sizes(line, message):
    error = config_error(f"[net]\ninputs=4\n{line}\n[softmax]\n")
    assert message in located(error, 3, "net", line.split("=")[0])


def test_error_partial_image_size():
    error = config_error("[net]\ninputs=6\nheight=2\nwidth=3\n[softmax]\n")
    assert "height, width and channels" in located(error, 1, "net", "channels")


def test_error_no_input_size():
    error = config_error("[net]\nbatch=2\n[softmax]\n")
    assert "no input size" in located(error, 1, "net")


def test_error_loss_layer_not_at_the_output():
    error = config_error("[net]\ninputs=6\n[softmax]\n[connected]\noutput=3\n")
    text = located(error, 3, "softmax")
    assert "loss against the truth" in text and "noloss=1" in text
    # allowed: a loss-free softmax inside, and a [cost] after the output layer
    build("[net]\ninputs=6\n[softmax]\nnoloss=1\n[connected]\noutput=3\n")
    net = build("[net]\ninputs=6\n[softmax]\n[cost]\n")
    assert net.output_layer.type == "softmax" and net.truths == 6


def test_error_steps_scales_length_mismatch():
    error = config_error("[net]\ninputs=4\npolicy=steps\nsteps=10,20,30\nscales=.1,.1\n[softmax]\n")
    assert "steps has 3 entries but scales has 2" in located(error, 5, "net", "scales")


def test_error_steps_policy_requires_steps():
    error = config_error("[net]\ninputs=4\npolicy=steps\nscales=.1\n[softmax]\n")
    assert "required key 'steps'" in located(error, 1, "net", "steps")


def test_error_unknown_activation():
    error = config_error("[net]\ninputs=4\n[connected]\noutput=2\nactivation=lrelu\n")
    text = located(error, 5, "connected", "activation")
    assert "unknown activation 'lrelu'" in text and "leaky" in text


def test_error_unknown_policy():
    error = config_error("[net]\ninputs=4\npolicy=cosine\n[softmax]\n")
    text = located(error, 3, "net", "policy")
    assert "unknown policy 'cosine'" in text and "steps" in text


def test_error_layer_value_out_of_range():
    error = config_error("[net]\ninputs=4\n[dropout]\nprobability=1\n")
    assert "probability" in located(error, 4, "dropout", "probability")
    error = config_error("[net]\ninputs=4\n[cost]\ntype=huber\n")
    assert "unknown cost type 'huber'" in located(error, 4, "cost", "type")


def test_error_from_file_names_the_path(tmp_path):
    path = write_cfg(tmp_path, "[net]\ninputs=4\n[softmax]\ngroups=3\n")
    with pytest.raises(ConfigError) as info:
        minidark.load_network(path)
    assert info.value.file == path and str(info.value).startswith(f"{path}:4 [softmax]")


def test_error_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read cfg file"):
        minidark.load_network(str(tmp_path / "nope.cfg"))


def test_error_not_utf8(tmp_path):
    path = tmp_path / "bin.cfg"
    path.write_bytes(b"[net]\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        minidark.load_network(str(path))


# --------------------------------------------------------------------------
# Unused keys
# --------------------------------------------------------------------------
def test_unused_keys_warn_with_line_numbers():
    text = "[net]\ninputs=4\nmosaic=0.1\n[connected]\noutput=2\nfilters=3\nsize=3\n"
    with pytest.warns(ConfigWarning) as record:
        net = build(text)
    assert len(net.layers) == 1
    messages = [str(r.message) for r in record]
    assert any("[net]" in m and "'mosaic = 0.1' (line 3)" in m for m in messages)
    layer = [m for m in messages if "[connected]" in m]
    assert len(layer) == 1  # one grouped warning per section
    assert "'filters = 3' (line 6)" in layer[0] and "'size = 3' (line 7)" in layer[0]


def test_no_warning_when_every_key_is_read():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(
            "[net]\ninputs=4\nbatch=2\n[connected]\noutput=3\nactivation=relu\n"
            "learning_rate=2\nstopbackward=0\n[softmax]\ngroups=3\n"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minidark.load_network(str(MLP_CFG))


def test_strict_makes_unused_keys_an_error():
    error = config_error("[net]\ninputs=4\n[softmax]\ngroups=1\nmosaic=2\n", strict=True)
    text = located(error, 5, "softmax", "mosaic")
    assert "unused" in text and "(line 5)" in text
    error = config_error("[net]\ninputs=4\ncutmix=3\n[softmax]\n", strict=True)
    located(error, 3, "net", "cutmix")


def test_strict_through_load_network(tmp_path):
    path = write_cfg(tmp_path, "[net]\ninputs=4\n[softmax]\nfoo=1\n")
    with pytest.raises(ConfigError, match="unused"):
        minidark.load_network(path, strict=True)
    with pytest.warns(ConfigWarning):
        minidark.load_network(path)


# --------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------
YAML_MLP = """\
- type: net
  batch: 4
  inputs: 6
  policy: steps
  steps: [10, 20]
  scales: [.1, 0.5]
  flip: false
- type: connected
  output: 5
  activation: relu
- type: softmax
"""


def test_yaml_reading_builds_the_same_network(tmp_path):
    path = write_cfg(tmp_path, YAML_MLP, "net.yaml")
    net = minidark.load_network(path)
    assert (net.batch, net.inputs, net.config.steps, net.flip) == (4, 6, [10, 20], 0)
    assert net.config.scales == pytest.approx([0.1, 0.5])
    assert [l.type for l in net.layers] == ["connected", "softmax"]
    assert net.layers[0].outputs == 5 and net.layers[0].activation == "relu"
    sections = read_sections(path)
    assert sections[1].line == 8 and sections[1].options[0].line == 9


def test_yaml_errors_name_file_and_line(tmp_path):
    path = write_cfg(
        tmp_path, "- type: net\n  inputs: 4\n- type: softmax\n  groups: [1, [2]]\n", "bad.yml"
    )
    with pytest.raises(ConfigError) as info:
        minidark.load_network(path)
    assert info.value.file == path and info.value.line == 4 and info.value.key == "groups"
    for text, message in [
        ("a: [", "invalid YAML"),
        ("{a: 1}", "list of sections"),
        ("- 3\n", "mapping"),
        ("- batch: 2\n  inputs: 3\n", "no 'type'"),
        ("- type: net\n  inputs: null\n", "empty value"),
        ("- type: net\n  inputs:\n", "plain value"),
    ]:
        with pytest.raises(ConfigError, match=message):
            read_yaml_text(text, "y.yaml")


def test_yaml_value_errors_name_line_section_and_key(tmp_path):
    path = write_cfg(
        tmp_path, "- type: net\n  inputs: 4\n- type: softmax\n  groups: two\n", "bad.yaml"
    )
    with pytest.raises(ConfigError) as info:
        minidark.load_network(path)
    assert (info.value.line, info.value.section, info.value.key) == (4, "softmax", "groups")


def test_yaml_nested_form_for_sections_with_a_type_key():
    sections = read_yaml_text(
        "- type: net\n  inputs: 4\n- cost:\n    type: masked\n    scale: 2\n- softmax:\n"
    )
    assert shape(sections) == [
        ("net", [("inputs", "4")]),
        ("cost", [("type", "masked"), ("scale", "2")]),
        ("softmax", []),
    ]


# --------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------
TRICKY = """\
[network]
batch=4
inputs=6
learning_rate=.1
momentum=0.9
decay=5e-4
policy=steps
steps=100,200,300
scales=.1,.1,10
max_batches=1000
exponent=1e3
names=data/my file.names
flag=yes
nothing=null
tilde=~
colon=a:b
hash=leaky#x
eq=a=b
trailing=100,
leading=,1
num=007

[connected]
output=5
activation=leaky
learning_rate=.5

[cost]
type=masked
scale=.5
scale=2

[softmax]
groups=1
"""


@pytest.mark.parametrize("source", ["mlp", "tricky"])
def test_cfg_yaml_cfg_round_trip_is_exact(tmp_path, source):
    cfg = str(MLP_CFG) if source == "mlp" else write_cfg(tmp_path, TRICKY, "tricky.cfg")
    original = read_sections(cfg)
    yaml_path, back_path = str(tmp_path / "a.yaml"), str(tmp_path / "b.cfg")
    convert_cfg(cfg, yaml_path)
    convert_cfg(yaml_path, back_path)
    assert shape(read_sections(yaml_path)) == shape(original)
    assert shape(read_sections(back_path)) == shape(original)
    # and the text is a fixed point after one conversion
    assert text_of(back_path) == sections_to_cfg(original)
    again = str(tmp_path / "c.yaml")
    convert_cfg(back_path, again)
    assert text_of(again) == text_of(yaml_path)


def test_round_trip_keeps_types_lists_and_first_wins(tmp_path):
    cfg = write_cfg(tmp_path, TRICKY, "tricky.cfg")
    yaml_path = str(tmp_path / "t.yml")
    convert_cfg(cfg, yaml_path)
    text = text_of(yaml_path)
    assert "[100, 200, 300]" in text  # lists become YAML lists
    with pytest.warns(ConfigWarning):
        a = build(TRICKY)
    with pytest.warns(ConfigWarning):
        b = minidark.load_network(yaml_path)
    assert a.layers[1].cost_type == b.layers[1].cost_type == "masked"
    assert a.layers[1].scale == b.layers[1].scale == 0.5  # the first 'scale' wins
    assert a.config.steps == b.config.steps == [100, 200, 300]
    assert a.learning_rate == b.learning_rate == pytest.approx(0.1)


def test_sections_to_yaml_and_back_in_memory():
    sections = read_cfg_text(TRICKY)
    assert shape(read_yaml_text(sections_to_yaml(sections))) == shape(sections)
    assert shape(read_cfg_text(sections_to_cfg(sections))) == shape(sections)


def test_mlp_cfg_loads_as_documented():
    net = minidark.load_network(str(MLP_CFG))
    assert [l.type for l in net.layers] == ["connected", "connected", "softmax"]
    assert [l.outputs for l in net.layers] == [512, 10, 10]
    assert (net.batch, net.inputs, net.momentum, net.decay) == (128, 784, 0.9, 0.0005)


# --------------------------------------------------------------------------
# Fuzzing: only a Network or a ConfigError, never another exception
# --------------------------------------------------------------------------
def only_network_or_config_error(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sections = read_cfg_text(text, file="fuzz.cfg")
            net = parse_network(sections, file="fuzz.cfg", verbose=False)
        except ConfigError as error:
            assert str(error)
            return None
    assert isinstance(net, minidark.Network)
    return net


FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@FUZZ
@given(st.text())
def test_fuzz_arbitrary_text(text):
    only_network_or_config_error(text)


@FUZZ
@given(st.text(alphabet="[]=#;,.-+ \t\r\nabcnetworkinputsbatchgroupsconnectedsoftmax0123456789"))
def test_fuzz_cfg_alphabet_text(text):
    only_network_or_config_error(text)


YAML_TEXT = st.text(alphabet="-:[]{},'\"!&*?|>#%@`~ \n\tabcnetypinputs0123456789.", max_size=80)


@FUZZ
@given(st.one_of(st.text(), YAML_TEXT))
def test_fuzz_yaml_text(text):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            net = parse_network(read_yaml_text(text, "fuzz.yaml"), verbose=False)
        except ConfigError:
            return
    assert isinstance(net, minidark.Network)


@FUZZ
@given(
    st.one_of(st.text(), st.text(alphabet="[]=#;,.-+ \t\r\nabtypenet0123456789:'\"!&*?|>{}%@`~"))
)
def test_fuzz_any_readable_cfg_round_trips_through_yaml(text):
    try:
        sections = read_cfg_text(text)
    except ConfigError:
        return
    assert shape(read_yaml_text(sections_to_yaml(sections))) == shape(sections)
    assert shape(read_cfg_text(sections_to_cfg(sections))) == shape(sections)


SECTIONS = [
    "net",
    "network",
    "connected",
    "conn",
    "softmax",
    "soft",
    "dropout",
    "cost",
    "activation",
    "conected",
    "",
    "maxpool",
]
KEYS = [
    "batch",
    "subdivisions",
    "inputs",
    "height",
    "width",
    "channels",
    "time_steps",
    "learning_rate",
    "policy",
    "steps",
    "scales",
    "step",
    "scale",
    "gamma",
    "power",
    "max_batches",
    "burn_in",
    "output",
    "activation",
    "batch_normalize",
    "groups",
    "temperature",
    "noloss",
    "spatial",
    "probability",
    "type",
    "stopbackward",
    "foo",
]
VALUES = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(
        [
            "0",
            "1",
            ".5",
            "1e-3",
            "-1",
            "abc",
            "relu",
            "leaky",
            "nope",
            "steps",
            "step",
            "exp",
            "poly",
            "sig",
            "random",
            "constant",
            "1,2",
            "3,",
            ".1,.2",
            "masked",
            "smooth",
            "L1",
            "sse",
            "inf",
            "-inf",
            "nan",
            "1_0",
            "9" * 30,
        ]
    ),
    st.text(max_size=5),
)
LINE = st.one_of(
    st.sampled_from(SECTIONS).map(lambda s: f"[{s}]"),
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.sampled_from(["# comment", "; comment", "", "novalue", "=3", "key=", "[", "[]"]),
)


@FUZZ
@given(st.lists(LINE, max_size=14), st.booleans())
def test_fuzz_cfg_lines(lines, with_head):
    head = ["[net]", "inputs=6"] if with_head else []
    only_network_or_config_error("\n".join(head + lines))


def mostly(valid, invalid):
    """Values that are valid about 4 times in 5."""
    return st.sampled_from(valid * (4 * len(invalid)) + invalid * len(valid))


SMALL_INT = mostly(["1", "2", "3", "4", "6", "12"], ["0", "-1"])
ACTIVATION = mostly(["relu", "leaky", "logistic", "linear", "tanh", "elu", "stair"], ["relu6"])
LAYER_OPTIONS = {
    "connected": {
        "output": SMALL_INT,
        "activation": ACTIVATION,
        "batch_normalize": st.sampled_from(["0", "1", "2"]),
    },
    "softmax": {
        "groups": mostly(["1", "2", "3"], ["5"]),
        "temperature": mostly([".5", "1", "2"], ["0"]),
        "noloss": st.sampled_from(["0", "1"]),
        "spatial": st.sampled_from(["0", "1"]),
    },
    "dropout": {"probability": mostly(["0", ".5", ".9"], ["1"])},
    "cost": {
        "type": mostly(["sse", "masked", "smooth", "L1"], ["seg"]),
        "scale": st.sampled_from(["1", ".5", "-2"]),
    },
    "activation": {"activation": ACTIVATION},
}
NET_OPTIONS = {
    "batch": mostly(["1", "2", "4"], ["0"]),
    "subdivisions": mostly(["1"], ["2", "0"]),
    "policy": mostly(["constant", "steps", "poly", "sig"], ["cosine"]),
    "steps": mostly(["1,2"], ["3"]),
    "scales": mostly([".1,.1"], [".5"]),
    "max_batches": mostly(["10"], ["0"]),
    "learning_rate": mostly([".1", ".01"], ["x"]),
}
INPUTS = mostly(
    ["inputs=6", "inputs=12", "height=2\nwidth=3\nchannels=1", "height=2\nwidth=2\nchannels=3"],
    ["inputs=0", "", "height=2\nwidth=2", "height=-1\nwidth=-6\nchannels=1"],
)
JUNK = st.sampled_from(
    [
        "# comment",
        "; comment",
        "",
        "novalue",
        "=3",
        "key=",
        "[",
        "[]",
        "[net]",
        "[conected]",
        "foo=1",
    ]
)


@st.composite
def section_lines(draw, kind, options):
    keys = draw(st.lists(st.sampled_from(sorted(options)), max_size=len(options)))
    lines = [f"[{kind}]"] + [f"{key}={draw(options[key])}" for key in keys]
    if draw(st.integers(0, 9)) == 0:  # now and then a junk line
        lines.insert(draw(st.integers(0, len(lines))), draw(JUNK))
    return lines


@st.composite
def cfg_texts(draw):
    lines = draw(section_lines("net", NET_OPTIONS))
    lines.insert(1, draw(INPUTS))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(sorted(LAYER_OPTIONS)))
        lines += draw(section_lines(kind, LAYER_OPTIONS[kind]))
    return "\n".join(lines)


@FUZZ
@given(cfg_texts(), st.integers(0, 2**32 - 1))
def test_fuzz_structured_cfg(text, seed):
    net = only_network_or_config_error(text)
    if net is None:
        return
    # a network that parses also trains: forward, backward and update run
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, net.input_buffer.shape)
    truth = rng.uniform(0, 1, net.truth_buffer.shape)
    with np.errstate(all="ignore"):
        net.forward(x, truth, train=True)
        net.backward()
        net.update()
        out = net.predict(x[:1])
    assert out.shape == (1, net.outputs)


def test_structured_fuzz_builds_networks():
    # The structured strategy must mostly produce networks, or it tests little.
    built = []

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(cfg_texts())
    def count(text):
        built.append(only_network_or_config_error(text) is not None)

    count()
    assert sum(built) >= 30, f"only {sum(built)} of {len(built)} fuzzed cfgs built a network"


def test_fuzz_helper_catches_other_exceptions():
    # The fuzz tests can fail: an exception other than ConfigError propagates.
    from minidark.registry import register_layer, unregister_layer

    def make_broken(options, params):
        return 1 / 0

    register_layer("fuzzbroken", make_broken)
    try:
        with pytest.raises(ZeroDivisionError):
            only_network_or_config_error("[net]\ninputs=4\n[fuzzbroken]\n")
    finally:
        unregister_layer("fuzzbroken")

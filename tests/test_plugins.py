"""Plugin layers: registration, clashes, --plugin files and modules, installed
entry points (a real pip install of tests/plugin_pkg), unused options,
weights of a plugin layer with parameters, and the examples/prelu.py layer."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

import minidark
from minidark import plugins, registry
from minidark.cfg import ConfigWarning
from minidark.errors import ConfigError, MinidarkError
from minidark.plugins import PluginError, load_plugin, load_plugins, module_name_for

ROOT = Path(__file__).resolve().parent.parent
PRELU = ROOT / "examples" / "prelu.py"
PRELU_BROKEN = ROOT / "examples" / "prelu_broken.py"
PLUGIN_PKG = ROOT / "tests" / "plugin_pkg"

PRELU_MLP = """
[net]
batch=3
inputs=6
learning_rate=0.5
momentum=0.9
decay=0.001

[connected]
output=5
activation=linear

[prelu]
slope=0.1

[connected]
output=4
activation=linear

[softmax]
"""


pytestmark = pytest.mark.usefixtures("isolated_registry")  # conftest.py


def make_identity(options, params):
    from minidark import Layer

    l = Layer(
        type="ident",
        **params.same_shape(),
    )
    l.output = np.zeros((params.batch, params.inputs), np.float32)
    l.delta = np.zeros_like(l.output)
    l.forward = lambda l, net: np.copyto(l.output, net.input.reshape(l.output.shape))
    l.backward = lambda l, net: None
    return l


# --------------------------------------------------------------- registration
def test_register_by_call_and_by_decorator(tmp_path, write_cfg):
    minidark.register_layer("ident", "ident_alias", make_identity)

    @minidark.register_layer("ident2")
    def make_ident2(options, params):
        return make_identity(options, params)

    assert registry.get_make("ident") is make_identity
    assert registry.get_make("ident_alias") is make_identity
    assert registry.get_make("ident2") is make_ident2
    net = minidark.load_network(
        write_cfg(
            tmp_path,
            """
        [net]
        batch=2
        inputs=3
        [ident]
        [ident_alias]
        [ident2]
        """,
        )
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(net.forward(x), x)
    assert [l.type for l in net.layers] == ["ident"] * 3


def test_registering_the_same_function_twice_is_harmless():
    minidark.register_layer("ident", make_identity)
    minidark.register_layer("ident", make_identity)
    assert registry.get_make("ident") is make_identity


def test_clash_with_a_builtin_names_both():
    with pytest.raises(ValueError) as info:
        minidark.register_layer("connected", make_identity)
    message = str(info.value)
    assert "'connected'" in message
    assert "test_plugins.make_identity" in message
    assert "minidark.layers.connected.make_connected" in message
    assert registry.get_make("connected").__module__ == "minidark.layers.connected"


def test_builtins_are_registered_exactly_like_plugins():
    # Every built-in came through register_layer (an origin was recorded) from
    # its own module under minidark/layers, and nothing else lists them.
    builtin = {
        name: origin for name, origin in registry._ORIGIN.items() if origin.startswith("minidark.")
    }
    assert {"connected", "conn", "softmax", "soft", "cost", "dropout", "activation"} <= set(builtin)
    for name, origin in builtin.items():
        module = origin.rsplit(".", 1)[0]
        assert module.startswith("minidark.layers."), origin
        assert getattr(sys.modules[module], origin.rsplit(".", 1)[1]) is registry.get_make(name)
    # a built-in can be replaced by a plugin after unregistering it: no special path
    original = registry.get_make("activation")
    registry.unregister_layer("activation")
    minidark.register_layer("activation", make_identity)
    assert registry.get_make("activation") is make_identity
    registry.unregister_layer("activation")
    minidark.register_layer("activation", original)


def test_unknown_section_hints_at_plugins(tmp_path, write_cfg):
    with pytest.raises(ConfigError, match=r"unknown section type \[prelu\].*--plugin"):
        minidark.load_network(write_cfg(tmp_path, PRELU_MLP))


# --------------------------------------------------------------- --plugin FILE
def test_file_plugin_loads_under_a_stable_name_once():
    module = load_plugin(str(PRELU))
    assert module.__name__ == module_name_for(PRELU)
    assert module.__name__.startswith("minidark_plugin_prelu_")
    assert sys.modules[module.__name__] is module
    assert registry.get_make("prelu") is module.make_prelu
    # the same file again (by another spelling of its path) is the same module
    relative = os.path.relpath(PRELU)
    assert load_plugins([relative, str(PRELU)]) == [module, module]


def test_file_plugin_clash_names_both_files():
    load_plugins([str(PRELU)])
    with pytest.raises(PluginError) as info:
        load_plugins([str(PRELU_BROKEN)])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"plugin '{PRELU_BROKEN}'")
    assert "layer name 'prelu'" in message
    assert f"plugin file {PRELU.resolve()}" in message  # the earlier registrant
    assert module_name_for(PRELU_BROKEN) not in sys.modules  # the failed import is gone
    assert registry.get_make("prelu").__module__ == module_name_for(PRELU)


def test_file_plugin_clash_with_builtin(tmp_path):
    plugin = tmp_path / "clash_conn.py"
    plugin.write_text(
        "import minidark\n\n"
        "@minidark.register_layer('conn')\n"
        "def make_my_conn(options, params):\n"
        "    pass\n"
    )
    with pytest.raises(PluginError) as info:
        load_plugins([str(plugin)])
    message = str(info.value)
    assert str(plugin) in message and "make_my_conn" in message
    assert "minidark.layers.connected.make_connected" in message


@pytest.mark.parametrize(
    "source, expected",
    [
        (None, "no such file"),
        ("def broken(:\n", "SyntaxError"),
        ("import numpy\nx = 1\nraise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("import not_a_module_xyz\n", "No module named 'not_a_module_xyz'"),
    ],
)
def test_file_plugin_errors_are_one_line_naming_the_spec(tmp_path, source, expected):
    path = tmp_path / "tp_bad.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(PluginError) as info:
        load_plugins([str(path)])
    message = str(info.value)
    assert isinstance(info.value, MinidarkError)
    assert "\n" not in message
    assert message.startswith(f"plugin '{path}'")
    assert expected in message
    if source and "RuntimeError" in source:
        assert f"{path}:3" in message  # where in the plugin it failed


# ------------------------------------------------------------- --plugin MODULE
def test_module_plugin(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGIN_PKG))
    (module,) = load_plugins(["minidark_testplugin.layers"])
    assert module.__name__ == "minidark_testplugin.layers"
    assert registry.get_make("tp_double") is module.make_double
    assert registry.get_make("tp_negate") is None  # undecorated: only its entry point registers it
    assert load_plugin("minidark_testplugin.layers") is module


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("no_such_package_xyz.layers", "no module named 'no_such_package_xyz' on sys.path"),
        ("not a module", "expected a path to a .py file or a dotted module name"),
    ],
)
def test_module_plugin_errors(spec, expected):
    with pytest.raises(PluginError) as info:
        load_plugins([spec])
    assert str(info.value).startswith(f"plugin '{spec}'")
    assert expected in str(info.value)


# -------------------------------------------------------------- entry points
def fake_distribution(folder, name, version, entry_points, modules=None):
    """A distribution as importlib.metadata sees it: <name>-<version>.dist-info."""
    folder = Path(folder)
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[minidark.layers]\n" + "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    )
    for module, text in (modules or {}).items():
        (folder / f"{module}.py").write_text(textwrap.dedent(text))
    return folder


def test_broken_entry_point_names_the_distribution(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "broken-layers", "0.3", {"warp": "tp_missing_module_xyz"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.DISABLE_ENV)
    for _ in range(2):  # fails every time, not only the first
        with pytest.raises(PluginError) as info:
            plugins.load_layers()
        message = str(info.value)
        assert "distribution 'broken-layers 0.3'" in message
        assert "entry point 'warp = tp_missing_module_xyz'" in message
        assert "No module named 'tp_missing_module_xyz'" in message
        assert "\n" not in message
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")  # the escape hatch
    plugins.load_layers()
    assert registry.get_make("connected") is not None


def test_entry_point_clash_with_builtin_names_distribution(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path,
        "clashing-layers",
        "1.0",
        {"conn": "tp_clash_conn"},
        {
            "tp_clash_conn": """
            import minidark

            @minidark.register_layer("conn")
            def make_conn(options, params):
                pass
            """
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(plugins.DISABLE_ENV)
    with pytest.raises(PluginError) as info:
        plugins.load_layers()
    message = str(info.value)
    assert "distribution 'clashing-layers 1.0'" in message
    assert "tp_clash_conn.make_conn" in message
    assert "minidark.layers.connected.make_connected" in message


@pytest.fixture(scope="module")
def installed_plugin_pkg(tmp_path_factory):
    """tests/plugin_pkg really installed (pip, offline) into a folder for PYTHONPATH."""
    import importlib.util

    assert importlib.util.find_spec("setuptools"), (
        "building tests/plugin_pkg offline needs setuptools in this environment "
        "(python -m pip install setuptools)"
    )
    work = tmp_path_factory.mktemp("plugin_install")
    source = work / "src"
    shutil.copytree(PLUGIN_PKG, source)  # pip builds in place: keep the repo clean
    target = work / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "minidark_testplugin-0.1.0.dist-info" / "entry_points.txt").exists()
    return target


def run_python(code, site, tmp_path, env_extra=None):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), OPENBLAS_NUM_THREADS="1"
    )
    env.pop(plugins.DISABLE_ENV, None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_entry_points_of_a_real_install(installed_plugin_pkg, tmp_path, write_cfg):
    write_cfg(
        tmp_path,
        """
        [net]
        batch=2
        inputs=3
        [tp_double]
        [tp_negate]
        """,
    )
    (tmp_path / "tp_clash.py").write_text(
        "import minidark\n@minidark.register_layer('tp_double')\n"
        "def make_other(options, params):\n    pass\n"
    )
    result = run_python(
        """
        import json, numpy as np, minidark
        from minidark import registry
        from minidark.plugins import PluginError, load_plugins
        from minidark.testing import gradcheck
        out = {}
        net = minidark.load_network("net.cfg")          # entry points load on first use
        out["types"] = [l.type for l in net.layers]
        out["forward"] = net.forward(np.array([[1, 2, 3], [4, 5, 6]])).tolist()
        out["negate_origin"] = registry._ORIGIN["tp_negate"]
        out["gradcheck"] = [r.status for r in gradcheck("net.cfg")]
        try:
            load_plugins(["tp_clash.py"])
        except PluginError as exc:
            out["clash"] = str(exc)
        print(json.dumps(out))
        """,
        installed_plugin_pkg,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["types"] == ["tp_double", "tp_negate"]
    assert out["forward"] == [[-2, -4, -6], [-8, -10, -12]]
    assert out["negate_origin"] == "minidark_testplugin.layers.make_negate"
    assert out["gradcheck"] == ["ok", "ok"]
    assert "plugin 'tp_clash.py'" in out["clash"]
    assert "minidark_testplugin.layers.make_double" in out["clash"]
    assert "distribution 'minidark-testplugin 0.1.0'" in out["clash"]

    # MINIDARK_NO_ENTRY_POINTS=1 turns them off: the cfg no longer parses
    result = run_python(
        """
        import minidark
        minidark.load_network("net.cfg")
        """,
        installed_plugin_pkg,
        tmp_path,
        {plugins.DISABLE_ENV: "1"},
    )
    assert result.returncode != 0
    assert "unknown section type [tp_double]" in result.stderr


# ------------------------------------------------------------ plugin layers
def test_unused_option_of_a_plugin_layer_is_reported(tmp_path, write_cfg):
    load_plugins([str(PRELU)])
    path = write_cfg(tmp_path, PRELU_MLP.replace("slope=0.1", "slope=0.1\nmosaic=3"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minidark.load_network(path)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]
    assert len(messages) == 1
    assert "[prelu]" in messages[0] and "'mosaic = 3'" in messages[0]
    with pytest.raises(ConfigError, match=r"unused field.*'mosaic = 3'"):
        minidark.load_network(path, strict=True)


def test_plugin_layer_bad_option_value_is_a_config_error(tmp_path, write_cfg):
    load_plugins([str(PRELU)])
    with pytest.raises(ConfigError, match=r"\[prelu\] key 'slope': expected a number"):
        minidark.load_network(write_cfg(tmp_path, PRELU_MLP.replace("slope=0.1", "slope=x")))


def test_weights_round_trip_of_a_plugin_layer(tmp_path, write_cfg):
    load_plugins([str(PRELU)])
    cfg = write_cfg(tmp_path, PRELU_MLP)
    net = minidark.load_network(cfg, seed=1)
    prelu = net.layers[1]
    assert prelu.saved == ("slopes",) and prelu.params == 5
    prelu.slopes[...] = np.random.default_rng(0).uniform(-1, 1, 5)
    net.seen = 96
    minidark.save_weights(net, tmp_path / "prelu.weights")
    size = (tmp_path / "prelu.weights").stat().st_size
    assert size == 20 + 4 * net.params == 20 + 4 * (6 * 5 + 5 + 5 + 5 * 4 + 4)

    other = minidark.load_network(cfg, seed=2)
    assert not np.array_equal(other.layers[0].weights, net.layers[0].weights)
    assert minidark.load_weights(other, tmp_path / "prelu.weights") == 96
    for mine, theirs in zip(net.layers, other.layers, strict=True):
        for name in mine.saved:
            np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name))
    # the slopes sit between layer 0's and layer 2's arrays, in layer order
    data = np.fromfile(tmp_path / "prelu.weights", "<f4", offset=20)
    np.testing.assert_array_equal(data[35:40], prelu.slopes)


def test_prelu_forward_matches_naive_per_channel(tmp_path, write_cfg):
    load_plugins([str(PRELU)])
    net = minidark.load_network(
        write_cfg(
            tmp_path,
            """
        [net]
        batch=2
        height=3
        width=4
        channels=2
        [prelu]
        """,
        )
    )
    layer = net.layers[0]
    assert (layer.out_c, layer.out_h, layer.out_w, layer.outputs) == (2, 3, 4, 24)
    layer.slopes[...] = [0.5, -2.0]
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 4)).astype(np.float32)
    out = net.forward(x).reshape(2, 2, 3, 4)
    expected = x.copy()
    for c, slope in enumerate([0.5, -2.0]):
        negative = x[:, c] <= 0
        expected[:, c][negative] = slope * x[:, c][negative]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_prelu_update_is_sgd_with_momentum_and_no_decay(tmp_path, write_cfg):
    load_plugins([str(PRELU)])
    net = minidark.load_network(write_cfg(tmp_path, PRELU_MLP), seed=0)
    prelu = net.layers[1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    truth = np.eye(4, dtype=np.float32)[[0, 1, 3]]
    net.forward(x, truth, train=True)
    net.backward()
    gradient = prelu.slope_updates.copy()
    assert np.any(gradient != 0)
    before = prelu.slopes.copy()
    net.update()
    rate = 0.5 / 3
    np.testing.assert_allclose(prelu.slopes, before + rate * gradient, rtol=1e-6)
    np.testing.assert_allclose(prelu.slope_updates, 0.9 * gradient, rtol=1e-6)


def test_prelu_network_learns(tmp_path, write_cfg):
    load_plugins([str(PRELU)])
    cfg = PRELU_MLP.replace("learning_rate=0.5", "learning_rate=0.02")
    net = minidark.load_network(write_cfg(tmp_path, cfg), seed=0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 6)).astype(np.float32)
    truth = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 30)]
    first = net.train_step(x, truth)
    for _ in range(60):
        last = net.train_step(x, truth)
    assert last < 0.4 * first
    assert not np.allclose(net.layers[1].slopes, 0.1)


# ------------------------------------------------------------ the guide
def test_extending_guide_matches_the_shipped_example(monkeypatch):
    guide = (ROOT / "docs" / "extending.md").read_text()
    begin = guide.index("<!-- prelu.py begin")
    block = guide[begin : guide.index("<!-- prelu.py end -->")]
    listing = block[block.index("```python\n") + len("```python\n") : block.rindex("```")]
    assert listing == PRELU.read_text(), "docs/extending.md's listing != examples/prelu.py"
    broken = PRELU_BROKEN.read_text()
    assert "# BUG (deliberate): d out / d slope_c is min(x, 0), not x" in broken
    assert 'np.einsum("bcs,bcs->c", delta, _views(l, net.input))' in broken
    cfg = (ROOT / "examples" / "prelu_mnist.cfg").read_text()
    assert "[connected]\noutput=256\nactivation=linear\n\n[prelu]\nslope=0.25\n" in cfg
    # the "in your own tests" example runs as written
    start = guide.index("from minidark.plugins import load_plugins\nfrom minidark.testing")
    snippet = guide[start : guide.index("```", start)]
    monkeypatch.chdir(ROOT)
    namespace = {}
    exec(compile(snippet, "docs/extending.md", "exec"), namespace)
    namespace["test_prelu_gradients"]()

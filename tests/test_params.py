"""The one parameter model: every front end takes defaults, ranges and messages from it."""

import inspect
import os
import re

import numpy as np
import pytest

from napari_stemcluster import cli, config, segment
from napari_stemcluster.core import params as model
from napari_stemcluster.engine import segment_chunked

SEGMENT_KEYS = [
    "threshold",
    "min_cluster_size",
    "q_mask",
    "sigma",
    "prefilter",
    "real_mask",
    "mask_min_size",
    "mask_hole_size",
    "average",
    "mask_source",
]


@pytest.mark.parametrize("func", [segment, segment_chunked])
def test_python_signatures_take_the_model_defaults(func):
    sig = inspect.signature(func).parameters
    for key in SEGMENT_KEYS:
        assert sig[key].default == model.DEFAULTS[key], key


def test_prefilter_defaults_are_the_model_defaults():
    from napari_stemcluster.core.pipeline import PREFILTER_DEFAULTS

    assert {
        "sigma": model.DEFAULTS["prefilter_sigma"],
        "radius": model.DEFAULTS["prefilter_radius"],
        "corr_range": model.DEFAULTS["corr_range"],
        "edge": model.DEFAULTS["prefilter_edge"],
        "q_step": model.DEFAULTS["prefilter_q_step"],
    } == PREFILTER_DEFAULTS
    res = segment(np.ones((3, 3, 4, 4)), prefilter=True, real_mask=None)
    assert res.params["prefilter"] == PREFILTER_DEFAULTS


def test_config_keys_defaults_and_groups():
    science = {p.name for p in model.PARAMS if p.group == "science"}
    assert set(config.PARAMETERS) == science
    assert set(config.RUN_OPTIONS) == set(model.BY_NAME) - science
    assert set(config.EXECUTION) == {"scheduler", "workers", "memory_limit"}
    for key, value in config.PARAMETERS.items():
        default = model.DEFAULTS[key]
        assert value == (list(default) if isinstance(default, tuple) else default)
    # segment_kwargs({}) gives segment's own defaults
    kw = config.segment_kwargs({})
    for key in SEGMENT_KEYS:
        assert kw[key] == model.DEFAULTS[key], key


def test_cli_has_one_option_per_parameter_with_its_default_in_the_help():
    parser = cli.build_parser()
    seg = next(a for a in parser._subparsers._actions if a.choices).choices["segment"]
    options = {a.dest: a for a in seg._actions}
    for p in model.PARAMS:
        action = options[p.name]
        assert action.option_strings[0] == "--" + p.name.replace("_", "-")
        assert action.help.startswith(p.help)
        if p.default is not None and not isinstance(p.default, bool):
            shown = p.default
            if isinstance(shown, tuple):
                shown = ",".join(str(v) for v in shown)
            assert f"(default: {shown})" in action.help, p.name


BAD = [
    ("threshold", 1.5),
    ("sigma", 1e308),
    ("sigma", -1.0),
    ("min_cluster_size", -1),
    ("mask_hole_size", 2**40),
    ("prefilter_radius", 100000),
    ("prefilter_sigma", 1e9),
    ("corr_range", (0.95, 0.85)),
    ("q_mask", (5.0, 2.0)),
    ("real_mask", 7.0),
    ("average", "median"),
    ("workers", 100000),
    ("memory_limit", "1e400"),
    ("memory_limit", 1e400),
]


@pytest.mark.parametrize("key,value", BAD)
def test_bad_values_have_one_message_everywhere(key, value):
    with pytest.raises(model.ParameterError) as core_error:
        model.check(key, value)
    message = str(core_error.value)
    assert message.startswith(f"{key} must be ")
    # the parameter-file validation says the same
    with pytest.raises(config.ConfigError) as file_error:
        config.validate(key, value)
    assert str(file_error.value) == message
    # and so does segment() (for its own keywords)
    segment_value = {
        "prefilter_radius": ("prefilter", {"radius": value}),
        "prefilter_sigma": ("prefilter", {"sigma": value}),
        "corr_range": ("prefilter", {"corr_range": value}),
    }.get(key, (key, value))
    if segment_value[0] in SEGMENT_KEYS:
        with pytest.raises(ValueError) as seg_error:
            segment(np.ones((3, 3, 4, 4)), **dict([segment_value]))
        assert str(seg_error.value) == message


@pytest.mark.parametrize(
    "option,text",
    [
        ("--sigma", "1e308"),
        ("--prefilter-radius", "100000"),
        ("--prefilter-sigma", "1e9"),
        ("--memory-limit", "1e400"),
        ("--workers", "100000"),
        ("--threshold", "nan"),
    ],
)
def test_cli_out_of_range_is_a_usage_error_not_a_traceback(option, text, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["segment", option, text])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    key = option[2:].replace("-", "_")
    assert f"{key} must be " in err and "Traceback" not in err


def test_parameter_files_must_be_small_regular_files(tmp_path):
    with pytest.raises(config.ConfigError, match="must be a regular file"):
        config.load_params("/dev/zero")
    link = tmp_path / "params.toml"
    os.symlink("/dev/zero", link)
    with pytest.raises(config.ConfigError, match="must be a regular file"):
        config.load_params(link)
    with pytest.raises(config.ConfigError, match="must be a regular file"):
        config.load_params(tmp_path)
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * config.MAX_FILE_BYTES + "\n")
    with pytest.raises(config.ConfigError, match=r"big\.toml: the parameter file is larger"):
        config.load_params(big)


def test_a_parameter_file_cannot_choose_where_the_data_goes(tmp_path, capsys):
    shared = tmp_path / "shared.toml"
    shared.write_text('threshold = 0.8\nscheduler = "tcp://203.0.113.5:8786"\n')
    with pytest.raises(config.ConfigError, match=r"shared\.toml: scheduler: execution settings"):
        config.load_params(shared)
    out = tmp_path / "r.h5"
    assert cli.main(["segment", "--config", str(shared), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "--trust-config" in err and "Traceback" not in err
    assert not out.exists()
    for key, value in (("workers", "100000"), ("memory_limit", '"1e400"')):
        shared.write_text(f"{key} = {value}\n")
        with pytest.raises(config.ConfigError, match=f"{key} must be"):
            config.load_params(shared, trust=True)


def test_trusted_config_and_settings_file_give_execution_settings(tmp_path, monkeypatch, capsys):
    own = tmp_path / "own.toml"
    own.write_text("workers = 2\n")
    with pytest.warns(UserWarning, match="trusted"):
        assert config.load_params(own, trust=True) == {"workers": 2}
    settings = tmp_path / "settings.toml"
    settings.write_text('memory_limit = "2GB"\n')
    monkeypatch.setenv("STEMCLUSTER_SETTINGS", str(settings))
    assert config.load_settings() == {"memory_limit": "2GB"}
    args = cli.build_parser().parse_args(["segment", "--config", str(own), "--trust-config"])
    assert cli._gather_params(args) == {"memory_limit": "2GB", "workers": 2}
    assert "warning: " in capsys.readouterr().err
    args = cli.build_parser().parse_args(["segment", "--memory-limit", "1GB"])
    assert cli._gather_params(args)["memory_limit"] == "1GB"  # the command line wins
    settings.write_text("threshold = 0.5\n")
    with pytest.raises(config.ConfigError, match="holds only"):
        config.load_settings()
    settings.write_text("workers = 2\n")
    settings.chmod(0o666)
    with pytest.raises(config.ConfigError, match="not be writable by others"):
        config.load_settings()


def test_requirements_name_the_range():
    for p in model.PARAMS:
        if p.kind in ("float", "int"):
            assert re.search(r"between \S+ and \S+", p.requirement), p.name
    assert model.PARAMS[0].name == "threshold"
    text = inspect.getsource(model)
    assert text.count("0.85, 0.95") == 1  # the prefilter range is written once


@pytest.mark.gui
def test_widget_defaults_come_from_the_model(make_napari_viewer, widget_settings):
    from napari_stemcluster.widgets import ClusteringWidget, PrefilterWidget, SimilarityWidget

    viewer = make_napari_viewer()
    pre = PrefilterWidget(viewer)
    from napari_stemcluster.core.prefilter import correlative_prefilter

    assert pre.params() == model.PREFILTER_DEFAULTS | {"edge": None}
    q_step = inspect.signature(correlative_prefilter).parameters["q_step"].default
    assert pre.params()["q_step"] == q_step == model.DEFAULTS["prefilter_q_step"]
    assert pre._q_step.max == model.BY_NAME["prefilter_q_step"].high
    assert pre._radius.max == model.BY_NAME["prefilter_radius"].high
    sim = SimilarityWidget(viewer)
    assert sim._sigma.value == model.DEFAULTS["sigma"]
    assert sim.mask_params() == {
        k: model.DEFAULTS[k] for k in ("real_mask", "mask_min_size", "mask_hole_size")
    }
    assert set(model.BY_NAME["real_mask"].choices) <= set(sim._method.choices)
    clus = ClusteringWidget(viewer)
    assert clus.params()["threshold"] == model.DEFAULTS["threshold"]
    assert clus._linkage.value == model.DEFAULTS["linkage"]
    assert tuple(clus._linkage.choices) == model.BY_NAME["linkage"].choices
    assert clus._min_size.value == model.DEFAULTS["min_cluster_size"]
    assert clus._average.value == model.DEFAULTS["average"]


def test_merlin_hdr_must_be_a_small_regular_file(tmp_path):
    from napari_stemcluster.io import StemFileError, open_dataset
    from test_io_formats import RNG, _write_mib

    frames = RNG.integers(0, 4096, (4, 4, 6)).astype(np.uint32)
    path = tmp_path / "scan.mib"
    _write_mib(path, frames, "U16", 12)
    os.symlink("/dev/zero", tmp_path / "scan.hdr")
    with pytest.raises(
        StemFileError, match=r"scan\.hdr: the Merlin \.hdr header must be a regular"
    ):
        open_dataset(path, scan_shape=(2, 2))
    (tmp_path / "scan.hdr").unlink()
    (tmp_path / "scan.hdr").write_bytes(b"HDR,\t\r\n" + b"x" * (config.MAX_FILE_BYTES + 1))
    with pytest.raises(StemFileError, match="larger than"):
        open_dataset(path, scan_shape=(2, 2))


@pytest.mark.gui
def test_widget_execution_settings_are_checked(widget_settings):
    from napari_stemcluster.widgets._common import save_settings
    from napari_stemcluster.widgets._execution import execution_settings, widget_executor

    assert execution_settings() == {}
    with widget_executor() as (ex, limit):
        assert "thread" in ex.describe() and limit is None
    save_settings("execution", {"scheduler": " tcp://10.0.0.5:8786 ", "memory_limit": "2GB"})
    assert execution_settings() == {"scheduler": "tcp://10.0.0.5:8786", "memory_limit": "2GB"}
    save_settings("execution", {"memory_limit": "1e400"})
    with pytest.raises(model.ParameterError, match="widget settings: memory_limit must be"):
        execution_settings()

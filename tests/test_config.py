"""TOML parameter files: round trip, validation, and the mapping to segment()."""

import sys

import numpy as np
import pytest

from napari_stemcluster import segment
from napari_stemcluster.config import (
    PARAMETERS,
    RUN_OPTIONS,
    ConfigError,
    load_params,
    params_from_result,
    parse_text,
    save_params,
    segment_kwargs,
    validate,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FULL = {
    "threshold": 0.875,
    "min_cluster_size": 7,
    "q_mask": [4.0, 30.5],
    "sigma": 1.5,
    "prefilter": True,
    "prefilter_sigma": 2.0,
    "prefilter_radius": 3,
    "corr_range": [0.8, 0.97],
    "prefilter_edge": 2,
    "prefilter_q_step": 2,
    "real_mask": 0.25,
    "mask_min_size": 4,
    "mask_hole_size": 9,
    "average": "prefiltered",
    "mask_source": "prefiltered",
    "linkage": "pair",
    "times": [2, 9],
    "scan_shape": [64, 32],
    "scheduler": "tcp://10.0.0.5:8786",
    "workers": 3,
    "memory_limit": "4GB",
}


def test_round_trip_every_key(tmp_path):
    assert set(FULL) == set(PARAMETERS) | set(RUN_OPTIONS)
    path = tmp_path / "params.toml"
    save_params(path, FULL)
    with pytest.warns(UserWarning, match="execution settings"):
        assert load_params(path, trust=True) == FULL
    text = path.read_text()
    assert text.startswith("#") and 'average = "prefiltered"' in text
    assert "prefilter = true" in text and "q_mask = [4.0, 30.5]" in text
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_defaults_round_trip_and_none_is_left_out(tmp_path):
    path = tmp_path / "p.toml"
    save_params(path, PARAMETERS)
    back = load_params(path)
    assert "q_mask" not in back and "prefilter_edge" not in back
    assert {**PARAMETERS, **back} == PARAMETERS


@pytest.mark.parametrize(
    "value", ["plain", 'quo"te', "back\\slash", "tab\tnew\nline", "ünïcødé", "\x01\x7f"]
)
def test_strings_are_escaped(tmp_path, value):
    path = tmp_path / "p.toml"
    save_params(path, {"scheduler": value})
    assert tomllib.loads(path.read_text())["scheduler"] == value.strip()


def test_segment_kwargs_and_params_from_result():
    kw = segment_kwargs(FULL)
    assert kw["prefilter"] == {
        "sigma": 2.0,
        "radius": 3,
        "corr_range": (0.8, 0.97),
        "edge": 2,
        "q_step": 2,
    }
    assert kw["q_mask"] == (4.0, 30.5) and kw["real_mask"] == 0.25
    assert "times" not in kw and "workers" not in kw
    assert segment_kwargs({})["prefilter"] is False
    assert segment_kwargs({"real_mask": "none"})["real_mask"] is None
    # a result's params give back the same segmentation
    rng = np.random.default_rng(0)
    cube = rng.poisson(4.0, (6, 7, 16, 16)).astype(np.uint16)
    first = segment(cube, **segment_kwargs({**FULL, "prefilter_edge": 1}))
    again = segment(cube, **segment_kwargs(params_from_result(first.params)))
    assert again.params == first.params
    np.testing.assert_array_equal(again.labels, first.labels)


def test_params_from_result_with_array_masks():
    cube = np.ones((4, 4, 4, 4))
    res = segment(cube, q_mask=np.ones((4, 4), bool), real_mask=np.ones((4, 4), bool))
    p = params_from_result(res.params)
    assert p["real_mask"] == "none" and "q_mask" not in p


@pytest.mark.parametrize(
    "key,value",
    [
        ("threshold", 1.5),
        ("threshold", "high"),
        ("threshold", True),
        ("min_cluster_size", -1),
        ("min_cluster_size", 2.5),
        ("sigma", -0.1),
        ("sigma", float("nan")),
        ("prefilter", "yes"),
        ("prefilter_radius", -2),
        ("corr_range", [0.9, 0.8]),
        ("corr_range", [0.9]),
        ("q_mask", [5, 2]),
        ("q_mask", [-1, 2]),
        ("real_mask", "li"),
        ("average", "median"),
        ("times", "5:2"),
        ("times", "a:b"),
        ("times", [3]),
        ("scan_shape", [0, 4]),
        ("scan_shape", [4]),
        ("workers", 0),
        ("scheduler", ""),
        ("memory_limit", "lots"),
    ],
)
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"{key} must be"):
        validate(key, value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("threshold = [\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not a valid TOML file"):
        load_params(bad)
    bad.write_text("treshold = 0.8\n")
    with pytest.raises(ConfigError, match=r"unknown parameter 'treshold' .*'threshold'"):
        load_params(bad)
    bad.write_text("[segment]\nthreshold = 0.8\n")
    with pytest.raises(ConfigError, match="tables are not used"):
        load_params(bad)
    bad.write_text("min_cluster_size = -3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: min_cluster_size must be"):
        load_params(bad)
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        save_params(tmp_path / "x.toml", {"colour": "red"})
    assert not (tmp_path / "x.toml").exists()


@pytest.mark.parametrize(
    "key,text,value",
    [
        ("q_mask", "10,40", [10.0, 40.0]),
        ("corr_range", " 0.8 , 0.9 ", [0.8, 0.9]),
        ("scan_shape", "64,32", [64, 32]),
        ("times", "0:3", [0, 3]),
        ("real_mask", "0.4", 0.4),
        ("real_mask", "OTSU", "otsu"),
        ("min_cluster_size", "3", 3),
        ("memory_limit", "2GiB", "2GiB"),
    ],
)
def test_parse_text(key, text, value):
    assert parse_text(key, text) == value


@pytest.mark.parametrize(
    "key,text",
    [("q_mask", "10"), ("q_mask", "a,b"), ("scan_shape", "3.5,2"), ("workers", "two")],
)
def test_parse_text_errors(key, text):
    with pytest.raises(ConfigError, match=key):
        parse_text(key, text)

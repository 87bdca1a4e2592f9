"""Results writer/reader, EMD cluster cube, and layer conversions of results."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

import napari_stemcluster
from conftest import blocks_labels, make_result
from napari_stemcluster._layers import layers_to_result, result_to_layers
from napari_stemcluster._writer import write_segmentation
from napari_stemcluster.core.result import SegmentationResult
from napari_stemcluster.io import (
    Calibration,
    StemFileError,
    detect_format,
    is_results_file,
    open_dataset,
    read_results,
    write_results,
)
from napari_stemcluster.io.emd import open_emd

CAL = Calibration(r_pixel_size=0.5, r_units="nm", q_pixel_size=0.02, q_units="A^-1")


def _assert_same(a: SegmentationResult, b: SegmentationResult):
    for name in ("labels", "mean_similarity", "real_mask", "similarity"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y)
    means_a = a.cluster_means if a.is_time_series else [a.cluster_means]
    means_b = b.cluster_means if b.is_time_series else [b.cluster_means]
    tabs_a = a.clusters if a.is_time_series else [a.clusters]
    tabs_b = b.clusters if b.is_time_series else [b.clusters]
    assert len(means_a) == len(means_b)
    for ma, mb, ta, tb in zip(means_a, means_b, tabs_a, tabs_b, strict=True):
        assert mb.dtype == np.float32
        np.testing.assert_array_equal(ma, mb)
        for col in ("size", "seed", "mean_similarity"):
            np.testing.assert_array_equal(getattr(ta, col), getattr(tb, col))


def test_roundtrip_4d(tmp_path):
    result = make_result(blocks_labels((6, 7)))
    out = write_results(tmp_path / "seg.h5", result, source="/data/scan.h5", calibration=CAL)
    assert out == tmp_path / "seg.h5" and is_results_file(out)
    back, info = read_results(out)
    _assert_same(result, back)
    assert back.params == result.params
    assert info["source"] == "/data/scan.h5"
    assert info["software_version"] == napari_stemcluster.__version__
    assert info["calibration"] == CAL.as_dict()
    assert info["format_version"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_roundtrip_5d_with_empty_time_step(tmp_path):
    labels = np.stack([blocks_labels((5, 4)), np.zeros((5, 4), np.int32), blocks_labels((5, 4))])
    labels[2][labels[2] == 4] = 0  # fewer clusters in the last step
    result = make_result(labels, qshape=(3, 8))
    write_results(tmp_path / "seg.h5", result)
    back, info = read_results(tmp_path / "seg.h5")
    assert back.is_time_series and back.n_clusters == [4, 0, 3]
    _assert_same(result, back)
    assert info["source"] is None
    with h5py.File(tmp_path / "seg.h5", "r") as f:
        np.testing.assert_array_equal(f["clusters/offsets"][()], [0, 4, 4, 7])
        np.testing.assert_array_equal(f["clusters/time"][()], [0, 0, 0, 0, 2, 2, 2])
        np.testing.assert_array_equal(f["clusters/label"][()], [1, 2, 3, 4, 1, 2, 3])


def test_file_layout(tmp_path):
    result = make_result(blocks_labels((6, 7)), qshape=(6, 5))
    write_results(tmp_path / "seg.h5", result, calibration=CAL)
    with h5py.File(tmp_path / "seg.h5", "r") as f:
        assert f["labels"].dtype == np.int32 and f["labels"].shape == (6, 7)
        for name in ("labels", "mean_similarity", "real_mask", "similarity"):
            assert f[name].compression == "gzip", name
        assert f["similarity"].shape == (6, 7, 8)
        assert f["real_mask"].dtype == bool
        assert json.loads(f.attrs["params"]) == result.params
        assert f.attrs["stemcluster_file"] == "segmentation"
        # cluster patterns are stored once, as the EMD DataCube
        data = f["cluster_means_root/cluster_means/data"]
        assert f["clusters/cluster_means"].id == data.id
        assert data.shape == (4, 1, 6, 5)


def test_emd_cluster_cube_mimics_py4dstem(tmp_path, shared_data):
    result = make_result(blocks_labels((6, 7)), qshape=(4, 5))
    write_results(tmp_path / "seg.h5", result, calibration=CAL)
    sample = shared_data / "emd" / "py4DSTEM_size2x3x4x5.h5"
    with h5py.File(sample, "r") as ref, h5py.File(tmp_path / "seg.h5", "r") as ours:
        assert set(ref.attrs) <= set(ours.attrs)
        for key in ("emd_group_type", "version_major", "version_minor"):
            assert ours.attrs[key] == ref.attrs[key]
        pairs = [
            ("datacube_root", "cluster_means_root"),
            ("datacube_root/datacube", "cluster_means_root/cluster_means"),
            ("datacube_root/metadatabundle", "cluster_means_root/metadatabundle"),
            (
                "datacube_root/metadatabundle/calibration",
                "cluster_means_root/metadatabundle/calibration",
            ),
        ]
        for a, b in pairs:
            assert dict(ref[a].attrs) == dict(ours[b].attrs), a
            rename = {"datacube": "cluster_means"}
            assert {rename.get(k, k) for k in ref[a]} == set(ours[b]), a
        cal_ref = ref["datacube_root/metadatabundle/calibration"]
        cal_ours = ours["cluster_means_root/metadatabundle/calibration"]
        for key in cal_ref:
            assert dict(cal_ref[key].attrs) == dict(cal_ours[key].attrs), key
            if isinstance(cal_ref[key], h5py.Dataset):
                assert cal_ref[key].dtype.kind == cal_ours[key].dtype.kind, key
        for i in range(4):
            d_ref = ref[f"datacube_root/datacube/dim{i}"]
            d_ours = ours[f"cluster_means_root/cluster_means/dim{i}"]
            assert d_ref.attrs["name"] == d_ours.attrs["name"]
        assert cal_ours["Q_pixel_size"][()] == 0.02
        assert cal_ours["_target_paths/0"][()] == b"/cluster_means"
    # our own EMD reader finds the cluster cube, with its Q calibration
    ds = open_emd(tmp_path / "seg.h5")
    assert ds.shape == (4, 1, 4, 5)
    np.testing.assert_array_equal(ds.cube.compute()[:, 0], result.cluster_means)
    assert ds.calibration.q_pixel_size == 0.02 and ds.calibration.q_units == "A^-1"


def test_results_file_is_not_opened_as_a_cube(tmp_path):
    write_results(tmp_path / "seg.h5", make_result(blocks_labels()))
    assert detect_format(tmp_path / "seg.h5") == "results"
    with pytest.raises(StemFileError, match=r"seg\.h5: is a napari-stemcluster results file"):
        open_dataset(tmp_path / "seg.h5")


def test_overwrite_rules(tmp_path):
    result = make_result(blocks_labels())
    path = tmp_path / "seg.h5"
    write_results(path, result)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_results(path, result)
    other = make_result(blocks_labels(), seed=5)
    write_results(path, other, overwrite=True)
    _assert_same(other, read_results(path)[0])
    # never the source file, never a data file
    cube = tmp_path / "scan.npy"
    np.save(cube, np.zeros((6, 7, 4, 4), np.uint16))
    before = cube.read_bytes()
    with pytest.raises(StemFileError, match=r"scan\.npy: is the source data file"):
        write_results(cube, result, source=cube, overwrite=True)
    with pytest.raises(StemFileError, match=r"scan\.npy: holds 4D/5D-STEM data \(npy\)"):
        write_results(cube, result, overwrite=True)
    assert cube.read_bytes() == before


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    result = make_result(blocks_labels())
    path = tmp_path / "seg.h5"
    write_results(path, result)
    before = path.read_bytes()
    original = h5py.Group.create_dataset

    def failing(self, name, *args, **kwargs):
        if name == "similarity":
            raise RuntimeError("disk full")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_results(path, make_result(blocks_labels(), seed=9), overwrite=True)
    with pytest.raises(RuntimeError, match="disk full"):
        write_results(tmp_path / "new.h5", result)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.h5"]


@pytest.mark.parametrize("compression", ["lz4", None])
def test_other_compressions(tmp_path, compression):
    result = make_result(blocks_labels((8, 8)))
    write_results(tmp_path / "seg.h5", result, compression=compression)
    _assert_same(result, read_results(tmp_path / "seg.h5")[0])


def test_invalid_results_and_files(tmp_path):
    result = make_result(blocks_labels())
    with pytest.raises(ValueError, match="compression"):
        write_results(tmp_path / "a.h5", result, compression="zip")
    bad = make_result(blocks_labels())
    bad.similarity = bad.similarity[..., :4]
    with pytest.raises(ValueError, match=r"similarity has shape .*expected"):
        write_results(tmp_path / "a.h5", bad)
    bad = make_result(blocks_labels())
    bad.cluster_means = bad.cluster_means[:2]
    with pytest.raises(ValueError, match="cluster_means must be"):
        write_results(tmp_path / "a.h5", bad)
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StemFileError, match=r"plain\.h5: not a napari-stemcluster results"):
        read_results(tmp_path / "plain.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(StemFileError, match=r"junk\.h5: cannot be read as HDF5"):
        read_results(tmp_path / "junk.h5")
    assert not (tmp_path / "a.h5").exists()


# ---------------------------------------------------------------- layers <-> result


def test_result_layers_roundtrip():
    result = make_result(blocks_labels((6, 7)))
    layers = result_to_layers(result, CAL, name="grains", source="scan.h5")
    (labels, lkw, ltype), (msim, skw, stype) = layers
    assert (ltype, stype) == ("labels", "image")
    assert lkw["name"] == "grains" and skw["name"] == "grains mean similarity"
    assert lkw["scale"] == (0.5, 0.5) and lkw["units"] == ("nm", "nm")
    assert labels is not result.labels  # painting must not change the stored result
    assert "index" not in lkw["features"]  # row k is label k (napari's own "Index")
    np.testing.assert_array_equal(lkw["features"]["size"][1:], result.clusters.size)
    meta = lkw["metadata"]["stemcluster"]
    assert meta["kind"] == "segmentation" and meta["source"] == "scan.h5"
    back = layers_to_result(labels, lkw["metadata"])
    _assert_same(result, back)
    np.testing.assert_array_equal(msim, result.mean_similarity)


def _means_reference(cube, labels, n):
    out = np.zeros((n, *cube.shape[-2:]))
    for lab in range(1, n + 1):
        sel = cube[labels == lab]
        if len(sel):
            out[lab - 1] = sel.astype(np.float64).mean(axis=0)
    return out


def test_edited_labels_get_recomputed_tables_and_means():
    rng = np.random.default_rng(4)
    labels = blocks_labels((6, 7))
    cube = rng.integers(0, 50, (6, 7, 6, 5)).astype(np.uint16)
    result = make_result(labels)
    (data, kwargs, _), _ = result_to_layers(result, cube=cube)
    data[0, :3] = 5  # paint a new cluster
    data[data == 2] = 0  # erase one
    back = layers_to_result(data, kwargs["metadata"])
    np.testing.assert_array_equal(back.labels, data)
    table = back.clusters
    np.testing.assert_array_equal(table.size, [np.sum(data == i) for i in range(1, 6)])
    assert tuple(table.seed[1]) == (-1, -1) and np.isnan(table.mean_similarity[1])
    for lab in (1, 3, 4, 5):
        members = data == lab
        best = np.unravel_index(
            np.argmax(np.where(members, result.mean_similarity, -np.inf)), data.shape
        )
        assert tuple(table.seed[lab - 1]) == best
        assert table.mean_similarity[lab - 1] == pytest.approx(
            result.mean_similarity[members].mean(), rel=1e-6
        )
    np.testing.assert_allclose(back.cluster_means, _means_reference(cube, data, 5), rtol=1e-5)
    # without the cube, edited labels cannot be saved
    (data2, kwargs2, _), _ = result_to_layers(result)
    data2[0, 0] = 3
    with pytest.raises(ValueError, match=r"edited.*cube"):
        layers_to_result(data2, kwargs2["metadata"])


def test_edited_5d_labels_and_seed_without_similarity():
    labels = np.stack([blocks_labels((4, 6))] * 2)
    cube = np.random.default_rng(1).integers(0, 9, (2, 4, 6, 3, 3)).astype(np.uint8)
    result = make_result(labels, qshape=(3, 3))
    result.mean_similarity[:] = np.nan
    (data, kwargs, _), _ = result_to_layers(result, cube=cube)
    data[1, data[1] == 4] = 1
    back = layers_to_result(data, kwargs["metadata"])
    assert back.n_clusters == [4, 3]
    np.testing.assert_array_equal(back.clusters[0].size, result.clusters[0].size)
    members = np.argwhere(data[1] == 1)
    centre = members.mean(axis=0)
    nearest = members[np.argmin(((members - centre) ** 2).sum(axis=1))]
    assert tuple(back.clusters[1].seed[0]) == tuple(nearest)
    np.testing.assert_allclose(
        back.cluster_means[1], _means_reference(cube[1], data[1], 3), rtol=1e-5
    )


def test_layers_without_result_are_refused():
    with pytest.raises(ValueError, match="not made by napari-stemcluster"):
        layers_to_result(np.zeros((3, 3), np.int32), {})


def test_napari_writer_function_roundtrip(tmp_path):
    result = make_result(blocks_labels((6, 7)))
    (data, kwargs, _), _ = result_to_layers(result, CAL, source=str(tmp_path / "scan.h5"))
    written = write_segmentation(str(tmp_path / "out.h5"), data, kwargs)
    assert written == [str(tmp_path / "out.h5")]
    back, info = read_results(written[0])
    _assert_same(result, back)
    assert info["source"] == str(tmp_path / "scan.h5")
    assert info["calibration"] == CAL.as_dict()
    # napari's dialog confirmed replacing: the writer overwrites results files
    assert write_segmentation(str(tmp_path / "out.h5"), data, kwargs) == written


@pytest.mark.parametrize("n_times", [None, 3])
def test_real_segmentation_round_trip_and_compression(tmp_path, n_times):
    from napari_stemcluster import segment
    from napari_stemcluster.synthetic import make_polycrystal

    sample = make_polycrystal((32, 32), (32, 24), n_times=n_times, n_particles=3, seed=3)
    result = segment(sample.cube, threshold=0.9, sigma=1.0)
    assert np.isnan(result.similarity).any()  # neighbours outside the scan
    path = write_results(tmp_path / "seg.h5", result, source="sample.h5", calibration=CAL)
    back, _ = read_results(path)
    _assert_same(result, back)
    ratio = sample.cube.nbytes / path.stat().st_size
    assert ratio > 10, f"compression ratio {ratio:.1f}"

"""Shared fixtures: the real detector files and small segmentation results."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from napari_stemcluster.core.result import ClusterTable, SegmentationResult

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MISSING_DATA = (
    "real detector files not found at ../shared/data (they ship beside the repository in CI)"
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (read-only real detector files)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(reason=MISSING_DATA)
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _freeze_survivors():
    """Keep the objects that earlier tests left alive out of later garbage collections.

    napari collects garbage (a full collection) whenever a viewer closes or a layer goes,
    and its test fixture again after each test. Objects that survive tests (caches,
    compiled kernels, napari's own references to closed viewers) pile up, and every
    full collection walked them all: late in the suite a GUI test's teardown took
    5-25 s. Freezing moves the survivors into the permanent generation, which
    collections skip; reference counting still frees them as usual.
    """
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def _close_cached_files():
    """Close the per-process cache of open files after each test."""
    yield
    from napari_stemcluster.io import close_cached_handles

    close_cached_handles()


def make_result(labels: np.ndarray, qshape=(6, 5), seed: int = 0) -> SegmentationResult:
    """A consistent SegmentationResult for ``labels`` ((Rx, Ry) or (T, Rx, Ry))."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=np.int32)
    msim = rng.uniform(0.2, 1.0, labels.shape).astype(np.float32)
    sim = rng.uniform(-1, 1, (*labels.shape, 8)).astype(np.float32)
    sim[..., 0, :, 3] = np.nan  # neighbours outside the scan
    real_mask = labels > 0

    def one(lab):
        n = int(lab.max())
        size = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64)
        seed_xy = np.array(
            [np.argwhere(lab == i)[0] if size[i - 1] else (-1, -1) for i in range(1, n + 1)],
            dtype=np.int64,
        ).reshape(n, 2)
        table = ClusterTable(
            size=size,
            seed=seed_xy,
            mean_similarity=rng.uniform(0, 1, n).astype(np.float32),
        )
        means = rng.uniform(0, 100, (n, *qshape)).astype(np.float32)
        return table, means

    if labels.ndim == 2:
        table, means = one(labels)
    else:
        pairs = [one(lab) for lab in labels]
        table = [p[0] for p in pairs]
        means = [p[1] for p in pairs]
    return SegmentationResult(
        labels=labels,
        mean_similarity=msim,
        real_mask=real_mask,
        similarity=sim,
        cluster_means=means,
        clusters=table,
        params={"threshold": 0.9, "sigma": 1.0, "scan_shape": [4, 5], "name": "test"},
    )


def blocks_labels(shape=(6, 7)) -> np.ndarray:
    """Labels 1..4 in four blocks, with a background row."""
    lab = np.zeros(shape, np.int32)
    h, w = shape
    lab[1 : h // 2, : w // 2] = 1
    lab[1 : h // 2, w // 2 :] = 2
    lab[h // 2 :, : w // 2] = 3
    lab[h // 2 :, w // 2 :] = 4
    return lab


@pytest.fixture
def widget_settings(tmp_path, monkeypatch):
    """Keep the widgets' remembered parameters out of the user's settings."""
    from napari_stemcluster.widgets._common import SETTINGS_ENV

    monkeypatch.setenv(SETTINGS_ENV, str(tmp_path / "settings.json"))


@pytest.fixture(scope="module")
def scan4d():
    """A small synthetic 4D scan (32x32 scan, 32x32 detector, 3 particles)."""
    from napari_stemcluster.synthetic import make_polycrystal

    return make_polycrystal((32, 32), (32, 32), n_particles=3, seed=0)


@pytest.fixture(scope="module")
def scan5d():
    """Its 3-step growth series."""
    from napari_stemcluster.synthetic import make_polycrystal

    return make_polycrystal((32, 32), (32, 32), n_particles=3, n_times=3, seed=0)

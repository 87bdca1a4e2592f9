"""The batched, parallel DFT refinement against the per-pattern kernel."""

import numpy as np
import pytest

from napari_stemcluster.core import _bragg_numba as kern


@pytest.mark.parametrize(("nx", "ny"), [(16, 16), (15, 22), (9, 4)])
def test_dft_refine_many_equals_dft_refine(nx, ny):
    rng = np.random.default_rng(nx * ny)
    xx, yy = np.mgrid[:nx, :ny]
    specs, which, pts = [], [], []
    for b in range(3):
        cx, cy = rng.uniform(1, nx - 2), rng.uniform(1, ny - 2)
        img = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 3.0) + 0.05 * rng.random((nx, ny))
        specs.append(np.fft.rfft2(img).astype(np.complex64))
        n = b + 1  # 1, 2, 3 points per pattern, incl. the borders
        p = np.vstack([[cx + 0.2, cy - 0.1], [0.0, 0.0], [nx - 1.0, ny - 1.0]])[:n]
        which += [b] * n
        pts.append(p)
    specs = np.stack(specs)
    which, pts = np.array(which), np.vstack(pts)
    got = kern.dft_refine_many(specs, which, pts, nx, ny, 10)
    want = np.vstack(
        [kern.dft_refine(specs[w], p[None], nx, ny, 10) for w, p in zip(which, pts, strict=True)]
    )
    np.testing.assert_allclose(got, want, atol=1e-9)
    # no points at all
    assert kern.dft_refine_many(specs, which[:0], pts[:0], nx, ny, 10).shape == (0, 2)

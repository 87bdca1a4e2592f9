"""The prefilter's results and numba's on-disk cache.

A subprocess loads the kernels this test session uses from numba's cache and
its results are compared with this process's. On an empty cache (as in CI)
this process compiled them afresh (and saved them), so fresh and cached
kernels are compared. They are not always bit for bit the same: with
``q_step=2`` a few values (42 of 15,120 here) of a freshly compiled kernel
differ by 1-2 units in the last place from the same kernel loaded from the
cache (a known gap, see the README); kernels loaded from the cache agree
with each other bit for bit. The bound below catches a stale or different
kernel, whose results differ by far more.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import napari_stemcluster
from napari_stemcluster.core.prefilter import correlative_prefilter

# Converted input dtypes: uint8 is read as the uint16 kernels' input, int16
# as the float32 kernels' (integer sums and float32 sweeps both run).
DTYPES = ("uint8", "int16")

SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_prefilter_cache import run
np.savez(sys.argv[1], **run())
"""


def run() -> dict:
    rng = np.random.default_rng(3)
    grains = rng.uniform(0, 200, (2, 20, 18))
    which = (np.arange(7 * 6) % 3 == 0).astype(int).reshape(7, 6)
    base = rng.poisson(grains[which])
    out = {}
    for name in DTYPES:
        cube = base.astype(name)
        for q_step in (1, 2):
            out[f"{name}_{q_step}"] = correlative_prefilter(
                cube, sigma=1.5, radius=2, corr_range=(0.0, 0.9), q_step=q_step
            )
    return out


def test_cached_kernels_give_the_bits_of_fresh_ones(tmp_path):
    here = run()  # compiled here first on an empty cache, saved for the subprocess
    src = str(Path(napari_stemcluster.__file__).resolve().parents[1])
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "cached.npz"), str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The subprocess loaded the kernels instead of compiling them.
    log = done.stdout + done.stderr
    assert "data loaded" in log and "_prefilter_numba" in log
    cached = np.load(tmp_path / "cached.npz")
    assert sorted(cached.files) == sorted(here)
    for key, value in here.items():
        np.testing.assert_array_max_ulp(cached[key], value, maxulp=4)
        assert np.mean(cached[key] != value) < 0.01, key

"""Following clusters through time: linking, events, kinetics, corrections."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from napari_stemcluster import segment
from napari_stemcluster.core.tracking import (
    EVENT_KINDS,
    grain_kinetics,
    growth_rates,
    link_clusters,
    link_result,
    merge_tracks,
    relabel_track,
    split_track,
)
from napari_stemcluster.synthetic_series import make_growth_events


@pytest.fixture(scope="module")
def series():
    return make_growth_events()


@pytest.fixture(scope="module")
def segmented(series):
    # A fixed real-space mask keeps the grains' edge and boundary pixels,
    # which the automatic (triangle) mask trims on a scan this small.
    return segment(series.cube, threshold=0.9, min_cluster_size=5, real_mask=0.5)


def _events(tr):
    return [
        (int(t), str(k), int(a), int(b)) for t, k, a, b in zip(*tr.events.values(), strict=True)
    ]


def _grain_to_track(truth, tracks):
    """Majority track of every (grain, step), and each grain's usual track."""
    pairs = []
    for g in np.unique(truth[truth > 0]):
        for t in range(truth.shape[0]):
            m = truth[t] == g
            if m.any():
                pairs.append((int(g), t, int(np.bincount(tracks[t][m]).argmax())))
    usual = {}
    for g in {p[0] for p in pairs}:
        usual[g] = Counter(k for gg, _, k in pairs if gg == g).most_common(1)[0][0]
    return pairs, usual


def _accuracy(truth, tracks):
    pairs, usual = _grain_to_track(truth, tracks)
    # A track may stand for one grain only: the grain seen most with it.
    owner = {}
    for g, k in usual.items():
        n = sum(1 for gg, _, kk in pairs if gg == g and kk == k)
        if k not in owner or n > owner[k][1]:
            owner[k] = (g, n)
    good = sum(1 for g, _, k in pairs if k > 0 and usual[g] == k and owner[k][0] == g)
    return good / len(pairs), usual


def _expected_events(series, usual):
    return sorted((t, kind, usual[g], usual[o] if o else 0) for t, kind, g, o in series.events)


# --------------------------------------------------------------------------
# the synthetic growth series


def test_generator_script_is_what_it_says(series):
    roles = series.roles
    areas = series.areas
    t_app, t_hid = next(t for t, k, _, _ in series.events if k == "appear"), 4
    assert areas[:t_app, roles["nucleating"]].sum() == 0 and areas[t_app, roles["nucleating"]] > 0
    assert areas[t_hid, roles["hidden"]] == 0
    assert areas[t_hid - 1, roles["hidden"]] > 0 and areas[t_hid + 1, roles["hidden"]] > 0
    t_merge = next(t for t, k, _, _ in series.events if k == "merge")
    assert areas[t_merge, roles["merge_source"]] == 0
    assert areas[t_merge - 1, roles["merge_source"]] > 0
    rot = series.orientations[:, roles["rotating"]]
    np.testing.assert_allclose(np.diff(rot), 4.0)
    assert np.ptp(series.orientations[:, roles["steady"]]) == 0
    # Steady growth: every grain but the dissolving one grows.
    assert areas[-1, roles["steady"]] > areas[0, roles["steady"]]


def test_segmented_series_linking_accuracy(series, segmented):
    tr = link_result(segmented)
    acc, usual = _accuracy(series.grains, tr.tracks)
    assert acc >= 0.95
    assert len(set(usual.values())) == series.n_grains  # one track per grain


def test_every_scripted_event_is_detected(series, segmented):
    tr = link_result(segmented)
    _, usual = _grain_to_track(series.grains, tr.tracks)
    found = _events(tr)
    for ev in _expected_events(series, usual):
        assert ev in found, (ev, found)
    # ... and nothing else happens, apart from the hidden grain's return.
    hidden = usual[series.roles["hidden"]]
    extra = [e for e in found if e not in _expected_events(series, usual)]
    assert extra == [(5, "reappear", hidden, 1)]


def test_hidden_grain_is_relinked(series, segmented):
    tr = link_result(segmented)
    g = series.roles["hidden"]
    before = np.bincount(tr.tracks[3][series.grains[3] == g]).argmax()
    after = np.bincount(tr.tracks[5][series.grains[5] == g]).argmax()
    assert before == after > 0
    assert not np.any(tr.tracks[4] == before)
    # Without gap closing the grain disappears and a new one appears.
    tr0 = link_result(segmented, max_gap=0)
    b0 = np.bincount(tr0.tracks[3][series.grains[3] == g]).argmax()
    a0 = np.bincount(tr0.tracks[5][series.grains[5] == g]).argmax()
    assert b0 != a0
    assert (4, "disappear", int(b0), 0) in _events(tr0)
    assert (5, "appear", int(a0), 0) in _events(tr0)


def test_per_step_labels_are_kept(segmented):
    tr = link_result(segmented)
    assert tr.step_labels is segmented.labels or np.array_equal(tr.step_labels, segmented.labels)
    for t in range(tr.n_steps):
        # The relabelling is a bijection of the step's labels.
        lab, trk = segmented.labels[t], tr.tracks[t]
        assert np.array_equal(lab > 0, trk > 0)
        pairs = set(zip(lab[lab > 0].tolist(), trk[trk > 0].tolist(), strict=True))
        assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_kinetics_areas_match_the_generator(series, segmented):
    tr = link_result(segmented)
    _, usual = _grain_to_track(series.grains, tr.tracks)
    kin = grain_kinetics(tr, segmented, calibration=series.calibration)
    assert kin.units["area"] == "nm^2" and kin.units["time"] == "s"
    for g, k in usual.items():
        for row in kin.rows(k):
            t = kin.table["step"][row]
            truth = series.areas[t, g] * series.r_pixel_size**2
            assert kin.table["time"][row] == pytest.approx(t * series.t_step)
            if truth == 0:  # the merged-away source has no area of its own
                continue
            assert kin.table["area"][row] == pytest.approx(truth, rel=0.05), (g, t)
    # Growth: positive for the steady grain, negative for the dissolving one.
    rates = kin.rates
    steady = rates["growth_rate"][rates["track"] == usual[series.roles["steady"]]][0]
    gone = rates["growth_rate"][rates["track"] == usual[series.roles["dissolving"]]][0]
    assert steady > 0 > gone
    a = series.areas[:, series.roles["steady"]].astype(float)
    expect = np.polyfit(np.arange(len(a)) * series.t_step, a, 1)[0]
    assert steady == pytest.approx(expect, rel=0.1)


def test_true_labels_with_shuffled_ids_link_exactly(series):
    rng = np.random.default_rng(3)
    labels = np.zeros_like(series.grains)
    for t in range(labels.shape[0]):
        ids = np.unique(series.grains[t][series.grains[t] > 0])
        perm = rng.permutation(len(ids)) + 1
        lut = np.zeros(series.n_grains + 1, np.int32)
        lut[ids] = perm
        labels[t] = lut[series.grains[t]]
    tr = link_clusters(labels)
    acc, usual = _accuracy(series.grains, tr.tracks)
    assert acc == 1.0
    expected = sorted(
        [*_expected_events(series, usual), (5, "reappear", usual[series.roles["hidden"]], 1)]
    )
    assert sorted(_events(tr)) == expected


def test_orientation_is_used_when_given(series):
    # The rotating grain with the orientation the generator knows.
    g = series.roles["rotating"]
    labels = (series.grains == g).astype(np.int32)
    orients = [np.array([series.orientations[t, g]]) for t in range(labels.shape[0])]
    tr = link_clusters(labels, orientations=orients)
    assert tr.params["used_orientations"]
    assert [a.tolist() for a in tr.track_of] == [[1]] * labels.shape[0]
    kin = grain_kinetics(tr, orientations=orients, calibration=series.calibration)
    np.testing.assert_allclose(kin.table["orientation"], series.orientations[:, g])
    assert kin.rates["rotation_rate"][0] == pytest.approx(4.0 / series.t_step)


# --------------------------------------------------------------------------
# small cases


def _stack(*frames):
    return np.stack([np.asarray(f, np.int32) for f in frames])


def test_global_assignment_beats_greedy():
    # Track 1 overlaps both clusters; greedily taking its best overlap
    # (cluster 1) would leave track 2 without a partner.
    a = np.array([[1, 1, 1, 1, 2, 2]])
    b = np.array([[0, 1, 1, 2, 2, 2]])
    tr = link_clusters(_stack(a, b), min_overlap=0.2)
    # Optimal: track 1 -> cluster 1 (IoU 2/4) and track 2 -> cluster 2 (IoU 2/3)
    # beats any assignment leaving a track out.
    assert tr.track_of[1].tolist() == [1, 2]
    a = np.array([[1, 1, 1, 2, 2, 0, 0]])
    b = np.array([[2, 2, 1, 1, 1, 1, 0]])
    tr = link_clusters(_stack(a, b), min_overlap=0.0)
    # Cluster 1 overlaps track 1 by 1 px and track 2 by 2 px, cluster 2 track 1
    # by 2 px: the best total pairs (1 -> 2, 2 -> 1).
    assert tr.track_of[1].tolist() == [2, 1]


def test_pattern_similarity_breaks_a_tie():
    # Two clusters swap halves of one region; only their patterns tell.
    a = np.array([[1, 1, 2, 2]])
    b = np.array([[1, 2, 2, 1]])
    means_a = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    means_b = np.array([[[0.0, 1.0]], [[1.0, 0.0]]])
    tr = link_clusters(_stack(a, b), [means_a, means_b], min_overlap=0.0)
    assert tr.track_of[1].tolist() == [2, 1]
    tr = link_clusters(_stack(a, b), [means_a, means_b[::-1]], min_overlap=0.0)
    assert tr.track_of[1].tolist() == [1, 2]


def test_orientation_period_folds_angles():
    a = np.array([[1, 1, 2, 2]])
    b = np.array([[1, 2, 2, 1]])
    orient = [np.array([10.0, 200.0]), np.array([100.0, 20.0])]
    # With a 90 degree period, 100 is 10 and 200 is 20: the ids stay.
    tr = link_clusters(_stack(a, b), orientations=orient, orientation_period=90.0)
    assert tr.track_of[1].tolist() == [1, 2]
    # Without symmetry, 10 is nearest 20 and 200 nearest 100.
    tr = link_clusters(_stack(a, b), orientations=orient, orientation_period=360.0)
    assert tr.track_of[1].tolist() == [2, 1]
    orient = [np.array([10.0, 50.0]), np.array([np.nan, np.nan])]
    tr = link_clusters(_stack(a, b), orientations=orient)
    assert sorted(tr.track_of[1].tolist()) == [1, 2]


def test_split_and_merge_events():
    a = np.array([[1, 1, 1, 1, 0, 2, 2]])
    b = np.array([[1, 1, 2, 2, 0, 3, 3]])  # 1 split; 2 stays
    c = np.array([[1, 1, 1, 1, 1, 1, 1]])  # everything merges
    tr = link_clusters(_stack(a, b, c))
    assert tr.track_of[1].tolist() == [1, 3, 2]
    assert _events(tr) == [(1, "split", 1, 3), (2, "merge", 1, 2), (2, "merge", 1, 3)]


def test_gap_longer_than_max_gap():
    frames = [np.array([[1, 1]]), np.zeros((1, 2)), np.zeros((1, 2)), np.array([[1, 1]])]
    tr = link_clusters(_stack(*frames), max_gap=2)
    assert [a.tolist() for a in tr.track_of] == [[1], [], [], [1]]
    assert _events(tr) == [(3, "reappear", 1, 2)]
    tr = link_clusters(_stack(*frames), max_gap=1)
    assert [a.tolist() for a in tr.track_of] == [[1], [], [], [2]]
    assert _events(tr) == [(1, "disappear", 1, 0), (3, "appear", 2, 0)]


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (3, 5)])
def test_edge_shapes_and_empty_steps(shape):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (4, *shape)).astype(np.int32)
    labels[2] = 0
    # Labels must be consecutive per step for the tables; renumber.
    for t in range(4):
        u = np.unique(labels[t][labels[t] > 0])
        lut = np.zeros(3, np.int32)
        lut[u] = np.arange(1, len(u) + 1)
        labels[t] = lut[labels[t]]
    tr = link_clusters(labels)
    assert tr.tracks.shape == labels.shape
    assert np.array_equal(tr.tracks > 0, labels > 0)
    assert tr.track_of[2].size == 0
    assert set(tr.events["kind"]) <= set(EVENT_KINDS)
    one = link_clusters(labels[:1])
    assert one.events["time"].size == 0
    blank = link_clusters(np.zeros((3, 2, 2), np.int32))
    assert blank.n_tracks == 0 and blank.events["time"].size == 0
    kin = grain_kinetics(blank)
    assert kin.table["track"].size == 0 and kin.rates["track"].size == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(T, Rx, Ry\)"):
        link_clusters(np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="integers"):
        link_clusters(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="max_gap"):
        link_clusters(np.zeros((2, 4, 4), np.int32), max_gap=-1)
    labels = np.ones((2, 2, 2), np.int32)
    with pytest.raises(ValueError, match="one array per time step"):
        link_clusters(labels, [np.zeros((1, 3, 3))])
    with pytest.raises(ValueError, match=r"cluster_means\[1\]"):
        link_clusters(labels, [np.zeros((1, 3, 3)), np.zeros((2, 3, 3))])
    with pytest.raises(ValueError, match="one angle per cluster"):
        link_clusters(labels, orientations=[[1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="weights"):
        link_clusters(labels, weights=(1, -1, 0))
    from conftest import make_result

    with pytest.raises(ValueError, match="4D"):
        link_result(make_result(np.ones((3, 3), np.int32)))


# --------------------------------------------------------------------------
# kinetics against per-pixel loops


def test_kinetics_against_a_plain_loop():
    from conftest import make_result

    rng = np.random.default_rng(1)
    labels = np.zeros((3, 7, 5), np.int32)
    labels[0, :4, :3] = 1
    labels[0, 4:, :] = 2
    labels[1, :5, :3] = 2
    labels[1, 5:, 1:] = 1
    labels[2, :, :4] = 1
    res = make_result(labels)
    inten = rng.uniform(0, 10, labels.shape)
    orient = [np.array([5.0, 355.0]), np.array([350.0, 20.0]), np.array([15.0])]
    tr = link_clusters(labels)
    cal = {"r_pixel_size": 0.2, "r_units": "nm", "t_step": 0.5, "t_units": "s"}
    for use_intensity in (False, True):
        kin = grain_kinetics(
            tr,
            res,
            intensity=inten if use_intensity else None,
            orientations=orient,
            calibration=cal,
        )
        tracks = tr.tracks
        rows = 0
        for t in range(3):
            for g in np.unique(tracks[t][tracks[t] > 0]):
                (row,) = np.flatnonzero((kin.table["track"] == g) & (kin.table["step"] == t))
                rows += 1
                mask = tracks[t] == g
                n = int(mask.sum())
                assert kin.table["area_px"][row] == n
                assert kin.table["area"][row] == pytest.approx(n * 0.04)
                assert kin.table["eq_radius"][row] == pytest.approx(np.sqrt(n * 0.04 / np.pi))
                assert kin.table["time"][row] == pytest.approx(0.5 * t)
                assert kin.table["mean_similarity"][row] == pytest.approx(
                    res.mean_similarity[t][mask].mean()
                )
                if use_intensity:
                    expect = inten[t][mask].mean()
                else:
                    totals = res.cluster_means[t].reshape(len(res.cluster_means[t]), -1).sum(1)
                    expect = np.mean([totals[lab - 1] for lab in labels[t][mask]])
                assert kin.table["mean_intensity"][row] == pytest.approx(expect)
                lab = np.unique(labels[t][mask])
                assert len(lab) == 1
                assert kin.table["orientation"][row] == pytest.approx(orient[t][lab[0] - 1])
        assert rows == len(kin.table["track"])
    # Rates: least-squares slopes, orientation unwrapped across 0/360.
    r = growth_rates(kin.table)
    for g in r["track"]:
        sel = kin.table["track"] == g
        if sel.sum() < 2:
            assert np.isnan(r["growth_rate"][r["track"] == g][0])
            continue
        x = kin.table["time"][sel]
        expect = np.polyfit(x, kin.table["area"][sel], 1)[0]
        assert r["growth_rate"][r["track"] == g][0] == pytest.approx(expect)
    t1 = r["track"] == tr.track_of[0][0]
    # Track of label 1 at t=0: 5 deg, then 20 deg (label 2 at t=1), then 15.
    assert r["rotation_rate"][t1][0] == pytest.approx(np.polyfit([0, 0.5, 1.0], [5, 20, 15], 1)[0])


def test_kinetics_without_calibration_counts_steps():
    labels = np.ones((3, 2, 2), np.int32)
    kin = grain_kinetics(link_clusters(labels))
    assert kin.units["time"] == "step" and kin.units["area"] == "pixel^2"
    assert kin.table["time"].tolist() == [0.0, 1.0, 2.0]
    assert np.isnan(kin.table["mean_similarity"]).all()


# --------------------------------------------------------------------------
# corrections at every step


def test_merge_relabel_and_split_tracks():
    frames = [np.array([[1, 1, 0, 0]]), np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 1]])]
    tr = link_clusters(_stack(*frames))
    assert [a.tolist() for a in tr.track_of] == [[1], [2], [2]]
    assert _events(tr) == [(1, "appear", 2, 0), (1, "disappear", 1, 0)]
    merged, changed = merge_tracks(tr, [2, 1])
    assert [a.tolist() for a in merged.track_of] == [[1], [1], [1]]
    assert changed == [1, 2]
    assert _events(merged) == []
    assert [a.tolist() for a in tr.track_of] == [[1], [2], [2]]  # input untouched
    split, changed = split_track(merged, 1, 2)
    assert [a.tolist() for a in split.track_of] == [[1], [1], [2]]
    assert changed == [2]
    assert _events(split) == [(2, "disappear", 1, 0), (2, "appear", 2, 0)]
    renamed, changed = relabel_track(split, 2, 9)
    assert [a.tolist() for a in renamed.track_of] == [[1], [1], [9]]
    assert changed == [2]
    assert np.array_equal(renamed.tracks[2], np.array([[0, 0, 9, 9]]))
    same, changed = relabel_track(renamed, 9, 1)  # onto an existing id: a merge
    assert changed == [2] and [a.tolist() for a in same.track_of] == [[1], [1], [1]]
    with pytest.raises(ValueError, match="no such track"):
        merge_tracks(tr, [1, 7])
    with pytest.raises(ValueError, match="within"):
        split_track(tr, 2, 1)
    with pytest.raises(ValueError, match="at least two"):
        merge_tracks(tr, [1])


# --------------------------------------------------------------------------
# results file, CSV and command line


def test_results_file_round_trip(series, segmented, tmp_path):
    from napari_stemcluster.core.tracking import track_series
    from napari_stemcluster.io import read_results, write_results

    tracking, kinetics = track_series(segmented, series.calibration)
    path = write_results(
        tmp_path / "r.h5",
        segmented,
        calibration=series.calibration,
        tracking=tracking,
        kinetics=kinetics,
    )
    _, info = read_results(path)
    back, kin = info["tracking"], info["kinetics"]
    assert [a.tolist() for a in back.track_of] == [a.tolist() for a in tracking.track_of]
    assert np.array_equal(back.tracks, tracking.tracks)
    assert _events(back) == _events(tracking)
    assert back.params == tracking.params
    assert list(kin.table) == list(kinetics.table)
    for k in kinetics.table:
        np.testing.assert_array_equal(kin.table[k], kinetics.table[k])
    for k in kinetics.rates:
        np.testing.assert_array_equal(kin.rates[k], kinetics.rates[k])
    assert kin.units == kinetics.units
    # A file without tracks says so.
    plain = write_results(tmp_path / "p.h5", segmented)
    _, info = read_results(plain)
    assert info["tracking"] is None and info["kinetics"] is None
    # Tracks that do not fit the clusters are refused.
    bad = link_clusters(segmented.labels[:, :, ::-1] * 0)
    with pytest.raises(ValueError, match="clusters per step"):
        write_results(tmp_path / "b.h5", segmented, tracking=bad)
    assert not (tmp_path / "b.h5").exists()


def test_csv_round_trip(series, segmented, tmp_path):
    from napari_stemcluster.core.tracking import track_series
    from napari_stemcluster.io._analysis_tracking import read_kinetics_csv, write_kinetics_csv

    tracking, kinetics = track_series(segmented, series.calibration)
    paths = write_kinetics_csv(tmp_path / "kin", kinetics, tracking)
    assert [p.name for p in paths] == ["kin.csv", "kin_rates.csv", "kin_events.csv"]
    table, units = read_kinetics_csv(paths[0])
    assert units["area"] == "nm^2" and units["time"] == "s"
    for k, v in kinetics.table.items():
        np.testing.assert_allclose(table[k], v, equal_nan=True)
    rates, _ = read_kinetics_csv(paths[1])
    np.testing.assert_allclose(rates["growth_rate"], kinetics.rates["growth_rate"])
    events, _ = read_kinetics_csv(paths[2])
    assert events["kind"].tolist() == tracking.events["kind"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_cli_segment_5d_writes_tracks(series, tmp_path):
    import h5py

    from napari_stemcluster import cli
    from napari_stemcluster.io import read_results

    data = tmp_path / "series.h5"
    with h5py.File(data, "w") as f:
        d = f.create_dataset("data", data=series.cube[:, :48, :48, :16, :16])
        d.attrs.update({"r_pixel_size": 0.5, "r_units": "nm", "t_step": 2.0, "t_units": "s"})
    out = tmp_path / "res.h5"
    assert cli.main(["segment", str(data), "-o", str(out), "--real-mask", "0.5", "-q"]) == 0
    result, info = read_results(out)
    tracking = info["tracking"]
    assert tracking is not None and tracking.n_tracks >= max(result.n_clusters)
    assert info["kinetics"].units["area"] == "nm^2"
    assert info["kinetics"].units["growth_rate"] == "nm^2/s"
    np.testing.assert_array_equal(info["kinetics"].table["time"] % 2.0, 0.0)
    assert (tmp_path / "res_kinetics.csv").is_file()
    assert (tmp_path / "res_kinetics_events.csv").is_file()
    # The CSV files follow the results file's rule: replaced only with --overwrite.
    out.unlink()
    args = ["segment", str(data), "-o", str(out), "--real-mask", "0.5", "-q"]
    assert cli.main(args) == 1
    assert not out.exists()
    assert cli.main([*args, "--overwrite"]) == 0
    assert read_results(out)[1]["tracking"] is not None


def test_overview_follows_grains_and_plots_kinetics(series, segmented, tmp_path):
    from PIL import Image

    from napari_stemcluster.core.tracking import track_series
    from napari_stemcluster.engine.overview import PANEL, label_colors, render_overview

    cube = series.cube[:, :, :, ::2, ::2]  # the virtual image only needs a smaller cube
    tracking, kinetics = track_series(segmented, series.calibration)
    plain = np.asarray(Image.open(render_overview(cube, segmented, tmp_path / "a.png")))
    tracked = np.asarray(
        Image.open(render_overview(cube, segmented, tmp_path / "b.png", tracking, kinetics))
    )
    assert tracked.shape[1] == plain.shape[1]
    assert tracked.shape[0] >= plain.shape[0] + 2 * PANEL  # the kinetics plot
    colors = label_colors(tracking.n_tracks)
    # The steady grain has the same colour in every row of the cluster maps.
    g = series.roles["steady"]
    ids = {int(np.bincount(tracking.tracks[t][series.grains[t] == g]).argmax()) for t in range(8)}
    assert len(ids) == 1
    rgb = colors[ids.pop()]
    panel_rows = [tracked[22 + r * (PANEL + 6) : 22 + r * (PANEL + 6) + PANEL] for r in range(5)]
    for row in panel_rows:
        assert np.all(row == rgb, axis=-1).sum() > 100


def test_same_grains_across_steps():
    from napari_stemcluster.core.tracking import same_grains

    a = np.array([[1, 1, 0, 2, 2, 0, 3]])
    b = np.array([[2, 2, 0, 1, 1, 0, 0]])
    c = np.array([[0, 0, 0, 1, 1, 0, 2]])
    tr = link_clusters(_stack(a, b, c))
    # Grain of label 1 at step 0 is label 2 at step 1 and absent at step 2.
    assert same_grains(tr, 0, [1]) == {0: [1], 1: [2]}
    assert same_grains(tr, 1, [1, 2]) == {0: [1, 2], 1: [1, 2], 2: [1]}
    assert same_grains(tr, 2, [2]) == {0: [3], 2: [2]}  # re-linked across the gap
    with pytest.raises(ValueError, match="no label 3"):
        same_grains(tr, 1, [3])
    with pytest.raises(ValueError, match="outside"):
        same_grains(tr, 5, [1])


def test_napari_writer_saves_tracks(series, segmented, tmp_path):
    from napari_stemcluster._layers import result_to_layers
    from napari_stemcluster._tracking_layers import tracking_layer
    from napari_stemcluster._writer import write_segmentation
    from napari_stemcluster.core.tracking import merge_tracks
    from napari_stemcluster.io import read_results

    tracking = link_result(segmented)
    fixed, _ = merge_tracks(tracking, [1, 2])
    data, kwargs, _ = tracking_layer(fixed, None, segmented, series.calibration)
    (path,) = write_segmentation(str(tmp_path / "t.h5"), data, {"metadata": kwargs["metadata"]})
    result, info = read_results(path)
    assert np.array_equal(result.labels, segmented.labels)
    assert np.array_equal(info["tracking"].tracks, fixed.tracks)
    assert 2 not in info["kinetics"].table["track"]
    # A clusters layer saves its tracks while they still fit its labels.
    labels, kw, _ = result_to_layers(segmented, series.calibration)[0]
    kw["metadata"]["stemcluster"]["tracking"] = tracking
    (path,) = write_segmentation(str(tmp_path / "c.h5"), labels, {"metadata": kw["metadata"]})
    assert np.array_equal(read_results(path)[1]["tracking"].tracks, tracking.tracks)
    kw["metadata"]["stemcluster"]["tracking"] = link_clusters(segmented.labels[:, ::-1])
    (path,) = write_segmentation(str(tmp_path / "d.h5"), labels, {"metadata": kw["metadata"]})
    assert read_results(path)[1]["tracking"] is None


def test_empty_labels_get_no_track():
    # Label 2 is empty at step 0 and label 1 at step 1 (merged away by an edit).
    a = np.array([[1, 1, 0, 3, 3]])
    b = np.array([[2, 2, 0, 3, 3]])
    tr = link_clusters(_stack(a, b))
    assert [x.tolist() for x in tr.track_of] == [[1, 0, 2], [0, 1, 2]]
    assert _events(tr) == []
    assert np.array_equal(tr.tracks, _stack([[1, 1, 0, 2, 2]], [[1, 1, 0, 2, 2]]))
    kin = grain_kinetics(tr)
    assert kin.table["track"].tolist() == [1, 1, 2, 2]


def test_empty_labels_are_no_grain_for_corrections():
    from napari_stemcluster.core.tracking import same_grains

    tr = link_clusters(_stack([[1, 1, 0, 3, 3]], [[2, 2, 0, 3, 3]]))
    assert same_grains(tr, 0, [2]) == {}
    assert same_grains(tr, 0, [1, 2]) == {0: [1], 1: [2]}
    with pytest.raises(ValueError, match="no such track: 0"):
        merge_tracks(tr, [0, 1])


# --------------------------------------------------------------------------
# orientation from the cluster averages


def _orientation_loop(pattern, order, inner):
    qx, qy = pattern.shape
    half = min(qx, qy) / 2
    ring = []
    for i in range(qx):
        for j in range(qy):
            dx, dy = i - (qx - 1) / 2, j - (qy - 1) / 2
            r = (dx * dx + dy * dy) ** 0.5
            if inner * half < r < half:
                ring.append((pattern[i, j], np.arctan2(dy, dx)))
    med = np.median([v for v, _ in ring])
    z, total = 0j, 0.0
    for v, th in ring:
        w = max(v - med, 0.0)
        z += w * np.exp(1j * order * th)
        total += w
    if total == 0:
        return np.nan, 0.0
    z /= total
    return np.degrees(np.angle(z)) / order % (360 / order), abs(z)


@pytest.mark.parametrize("shape", [(9, 9), (12, 17), (16, 16)])
@pytest.mark.parametrize("order", [2, 4, 6])
def test_pattern_orientation_against_a_loop(shape, order):
    from napari_stemcluster.core.tracking import pattern_orientation

    rng = np.random.default_rng(order)
    pats = rng.poisson(3.0, (3, *shape)).astype(np.uint16)
    pats = np.concatenate([pats, np.zeros((1, *shape), np.uint16), np.full((1, *shape), 7)])
    angle, strength = pattern_orientation(pats, order, inner=0.2)
    for k in range(len(pats)):
        a, s = _orientation_loop(pats[k].astype(float), order, 0.2)
        if np.isnan(a):
            assert np.isnan(angle[k]) and strength[k] == 0
        else:
            assert angle[k] == pytest.approx(a, abs=1e-9)
            assert strength[k] == pytest.approx(s, abs=1e-12)
    assert np.isnan(angle[-2:]).all()  # blank and constant patterns
    with pytest.raises(ValueError, match=r"\(N, Qx, Qy\)"):
        pattern_orientation(pats[0])


def test_pattern_orientation_of_a_rotated_lattice():
    from napari_stemcluster import synthetic as syn
    from napari_stemcluster.core.tracking import pattern_orientation

    rng = np.random.default_rng(0)
    for angle in (3.0, 17.0, 44.0, 71.0, 133.0):
        pat = syn._grain_pattern(rng, (48, 48), 0.16 * 48, "[001]", angle)
        est, strength = pattern_orientation(pat[None])
        d = abs(est[0] - angle % 90)
        assert min(d, 90 - d) < 1.0, (angle, est)
        assert strength[0] > 0.3


def test_orientation_from_patterns_follows_the_rotating_grain(series, segmented):
    from napari_stemcluster.core.tracking import track_series

    tracking, kinetics = track_series(segmented, series.calibration, orientations="pattern")
    _, usual = _grain_to_track(series.grains, tracking.tracks)
    rates = kinetics.rates
    rot = rates["rotation_rate"][rates["track"] == usual[series.roles["rotating"]]][0]
    still = rates["rotation_rate"][rates["track"] == usual[series.roles["steady"]]][0]
    assert rot == pytest.approx(series.params["rotation_per_step"] / series.t_step, rel=0.25)
    assert abs(still) < 0.1 * abs(rot)
    # The steady [001]-or-[011] grain: constant orientation, within [0, 90).
    rows = kinetics.rows(usual[series.roles["steady"]])
    o = kinetics.table["orientation"][rows]
    assert np.all((o >= 0) & (o < 90)) and np.ptp(o) < 1.0
    with pytest.raises(ValueError, match="pattern"):
        track_series(segmented, orientations="bragg")


# --------------------------------------------------------------------------
# orientation and Bragg results in the linking


def _rz(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _orientation_result(rotations, phases, structures, indexed=None):
    """An OrientationResult from per-step rotations (N_t, 3, 3) and phases."""
    from napari_stemcluster.core.orientation import ORIENTATION_DTYPE, OrientationResult

    counts = [len(r) for r in rotations]
    rec = np.zeros(sum(counts), ORIENTATION_DTYPE)
    if rec.size:
        rec["rotation"] = np.concatenate([np.reshape(r, (-1, 3, 3)) for r in rotations])
        rec["phase"] = np.concatenate(phases)
        rec["indexed"] = True if indexed is None else np.concatenate(indexed)
        rot = rec["rotation"]
        rec["inplane_deg"] = np.degrees(np.arctan2(rot[:, 1, 0], rot[:, 0, 0])) % 360.0
    rec["rotation"][~rec["indexed"]] = np.nan
    rec["phase"][~rec["indexed"]] = -1
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return OrientationResult(records=rec, offsets=offsets, structures=list(structures))


@pytest.fixture(scope="module")
def gold():
    from napari_stemcluster.core import load_structure
    from napari_stemcluster.data import builtin_cif

    return load_structure(builtin_cif("Au"))


def test_orientation_results_link_modulo_the_crystal_symmetry(gold):
    # Two clusters swap halves of one region: only their orientations tell.
    labels = _stack([[1, 1, 2, 2]], [[1, 2, 2, 1]])
    # Step 1, cluster 1 is grain A turned by a cubic 4-fold (the same
    # orientation); cluster 2 is grain B turned by 1 degree.
    rots = [np.stack([_rz(10), _rz(40)]), np.stack([_rz(100), _rz(41)])]
    res = _orientation_result(rots, [[0, 0], [0, 0]], [gold])
    tr = link_clusters(labels, orientations=res, min_overlap=0.0)
    assert tr.params["used_orientations"] == "rotations"
    assert tr.track_of[1].tolist() == [1, 2]
    # The bare in-plane angles (10 -> 100 is 90 degrees) would swap them.
    angles = [np.array([10.0, 40.0]), np.array([100.0, 41.0])]
    swapped = link_clusters(labels, orientations=angles, min_overlap=0.0)
    assert swapped.track_of[1].tolist() == [2, 1]
    # Another phase is another grain, whatever the angle: cluster 1 has grain
    # A's orientation in another phase, cluster 2 A's in A's phase.
    rots[1] = np.stack([_rz(10), _rz(10)])
    res = _orientation_result(rots, [[0, 0], [1, 0]], [gold, gold])
    tr = link_clusters(labels, orientations=res, min_overlap=0.0)
    assert tr.track_of[1].tolist() == [2, 1]
    # Not indexed: neutral, the overlap decides (here a tie broken by order).
    res = _orientation_result(rots, [[0, 0], [0, 0]], [gold], [[True, True], [False, False]])
    assert sorted(link_clusters(labels, orientations=res).track_of[1].tolist()) == [1, 2]
    with pytest.raises(ValueError, match="clusters per step"):
        link_clusters(labels[:, :, :2], orientations=res)


def test_orientation_similarity_against_a_loop(gold):
    from scipy.spatial.transform import Rotation

    from napari_stemcluster.core.orientation import misorientation_deg
    from napari_stemcluster.core.tracking import _Orientations

    rots = [Rotation.random(4, random_state=s).as_matrix() for s in (1, 2)]
    phases = [np.array([0, 0, 1, 0]), np.array([0, 1, 1, 0])]
    indexed = [np.array([True, True, True, False]), np.array([True, True, True, True])]
    res = _orientation_result(rots, phases, [gold, gold], indexed)
    src = _Orientations(res, [4, 4], None)
    prev_t = np.zeros(16, int)
    prev_lab, lab = np.meshgrid(np.arange(1, 5), np.arange(1, 5), indexing="ij")
    got = src.similarity(prev_t, prev_lab.ravel(), 1, lab.ravel())
    for k, (i, j) in enumerate(zip(prev_lab.ravel() - 1, lab.ravel() - 1, strict=True)):
        if not (indexed[0][i] and indexed[1][j]):
            expect = 0.5
        elif phases[0][i] != phases[1][j]:
            expect = 0.0
        else:
            d = float(misorientation_deg(rots[0][i], rots[1][j], gold))
            expect = 1.0 - min(d, 90.0) / 90.0
        assert got[k] == pytest.approx(expect, abs=1e-9), (i, j)
    # Kinetics angles: the matched in-plane angle, NaN where not indexed.
    assert np.isnan(src.angles(0)[3]) and np.isfinite(src.angles(1)).all()


def _truth_orientations(series, labels, structures):
    """OrientationResult of every cluster from the grain it mostly covers."""
    rng = np.random.default_rng(11)
    from scipy.spatial.transform import Rotation

    base = Rotation.random(series.n_grains + 1, random_state=rng).as_matrix()
    rots, phases = [], []
    for t in range(labels.shape[0]):
        n = int(labels[t].max())
        r = np.zeros((n, 3, 3))
        for lab in range(1, n + 1):
            g = np.bincount(series.grains[t][labels[t] == lab], minlength=2)[1:].argmax() + 1
            r[lab - 1] = _rz(series.orientations[t, g]) @ base[g]
        rots.append(r)
        phases.append(np.zeros(n, np.int32))
    return _orientation_result(rots, phases, structures)


def test_segmented_series_links_with_orientation_results(series, segmented, gold):
    from napari_stemcluster.core.tracking import track_series

    orient = _truth_orientations(series, segmented.labels, [gold])
    tracking, kinetics = track_series(segmented, series.calibration, orientations=orient)
    assert tracking.params["used_orientations"] == "rotations"
    acc, usual = _accuracy(series.grains, tracking.tracks)
    assert acc >= 0.95
    found = _events(tracking)
    for ev in _expected_events(series, usual):
        assert ev in found, (ev, found)
    # The kinetics follow the matched in-plane angle: 4 degrees per step.
    rates = kinetics.rates
    rot = rates["rotation_rate"][rates["track"] == usual[series.roles["rotating"]]][0]
    assert rot == pytest.approx(series.params["rotation_per_step"] / series.t_step, rel=0.02)
    still = rates["rotation_rate"][rates["track"] == usual[series.roles["steady"]]][0]
    assert abs(still) < 1e-6


def test_bragg_lattices_link_modulo_the_lattice_symmetry():
    from napari_stemcluster.core.lattice import LatticeTable
    from napari_stemcluster.core.tracking import _lattice_period

    def table(angles, square=True):
        a = np.radians(np.asarray(angles, float))
        g1 = 10 * np.stack([np.cos(a), np.sin(a)], 1)
        b = a + np.radians(90.0 if square else 75.0)
        g2 = (10 if square else 13) * np.stack([np.cos(b), np.sin(b)], 1)
        n = len(a)
        z = np.zeros(n, np.int64)
        return LatticeTable(g1, g2, np.zeros((n, 2)), z, z, np.zeros(n))

    labels = _stack([[1, 1, 2, 2]], [[1, 2, 2, 1]])
    # Square lattices: g1 may be any of the four shortest vectors, so 10 and
    # 100 degrees are the same lattice.
    lattices = [table([10.0, 40.0]), table([100.0, 41.0])]
    assert _lattice_period(lattices) == 90.0
    tr = link_clusters(labels, orientations={"lattices": lattices}, min_overlap=0.0)
    assert tr.params["used_orientations"] == "lattices"
    assert tr.params["orientation_period"] == 90.0
    assert tr.track_of[1].tolist() == [1, 2]
    # Oblique lattices only have the two-fold symmetry (g1 and -g1).
    lattices = [table([10.0, 40.0], False), table([100.0, 41.0], False)]
    assert _lattice_period(lattices) == 180.0
    tr = link_clusters(labels, orientations=lattices, min_overlap=0.0)
    assert tr.track_of[1].tolist() == [2, 1]
    kin = grain_kinetics(tr, orientations=lattices)
    np.testing.assert_allclose(kin.table["orientation"][kin.table["step"] == 1], [41.0, 100.0])
    assert kin.units["orientation"] == "deg"


def test_cli_track_links_by_the_orientation_results(series, segmented, gold, tmp_path, capsys):
    from napari_stemcluster import cli
    from napari_stemcluster.io import read_results, save_orientation, write_results

    path = write_results(tmp_path / "s.h5", segmented, calibration=series.calibration)
    orient = _truth_orientations(series, segmented.labels, [gold])
    save_orientation(path, orient)
    assert cli.main(["track", str(path)]) == 0
    out = capsys.readouterr().out
    assert "linked by overlap, patterns, orientation results" in out
    _, info = read_results(path)
    tracking, kinetics = info["tracking"], info["kinetics"]
    assert tracking.params["used_orientations"] == "rotations"
    acc, usual = _accuracy(series.grains, tracking.tracks)
    assert acc >= 0.95
    rows = kinetics.rows(usual[series.roles["rotating"]])
    np.testing.assert_allclose(np.diff(kinetics.table["orientation"][rows]), 4.0, atol=1e-6)
    assert info["orientation"] is not None  # the rest of the file is kept
    # Opened in napari, the tracked layer keeps the orientations it was linked
    # with, for kinetics recomputed after a correction.
    from napari_stemcluster._reader import read_stem

    (meta,) = [
        kw["metadata"]["stemcluster"]
        for _, kw, _ in read_stem(str(path))
        if kw.get("metadata", {}).get("stemcluster", {}).get("kind") == "tracks"
    ]
    assert len(meta["orientations"].records) == len(orient.records)
    for name in ("s_kinetics.csv", "s_kinetics_rates.csv", "s_kinetics_events.csv"):
        assert (tmp_path / name).is_file()
    # Without orientations, and refusals that name the file.
    assert cli.main(["track", str(path), "--orientation", "none", "-q"]) == 0
    assert read_results(path)[1]["tracking"].params["used_orientations"] is None
    assert cli.main(["track", str(path), "--orientation", "bragg", "-q"]) == 1
    assert "holds no bragg results" in capsys.readouterr().err
    from conftest import make_result

    flat = write_results(tmp_path / "4d.h5", make_result(np.ones((3, 3), np.int32)))
    before = flat.read_bytes()
    assert cli.main(["track", str(flat), "-q"]) == 1
    assert "4D segmentation" in capsys.readouterr().err
    assert flat.read_bytes() == before


def test_napari_growth_sample_keeps_its_grains():
    # The README's figure: the 5D sample, segmented with the defaults.
    from napari_stemcluster._sample_data import GROWTH_5D
    from napari_stemcluster.synthetic import make_polycrystal

    sample = make_polycrystal(**GROWTH_5D)
    res = segment(sample.cube)
    tr = link_result(res)
    acc, usual = _accuracy(sample.grains, tr.tracks)
    per_step, _ = _accuracy(sample.grains, res.labels)
    assert acc >= 0.95 and per_step < 0.5
    assert len(usual) == len(set(usual.values())) == tr.n_tracks == 10


def test_save_tracking_replaces_the_group_atomically(series, segmented, tmp_path):
    from napari_stemcluster.core.tracking import track_series
    from napari_stemcluster.io import StemFileError, read_results, save_tracking, write_results

    path = write_results(tmp_path / "s.h5", segmented, calibration=series.calibration)
    tracking, kinetics = track_series(segmented, series.calibration)
    fixed, _ = merge_tracks(tracking, [1, 2])
    assert save_tracking(path, fixed, kinetics) == path
    _, info = read_results(path)
    assert np.array_equal(info["tracking"].tracks, fixed.tracks)
    before = path.read_bytes()
    bad = link_clusters(segmented.labels[:2])
    with pytest.raises(ValueError, match=r"s\.h5: the tracking has"):
        save_tracking(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(StemFileError, match="not a napari-stemcluster results file"):
        save_tracking(tmp_path / "x.h5", fixed)

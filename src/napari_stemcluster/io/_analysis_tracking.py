"""Grain tracks, events and kinetics in the results file, and as CSV.

:func:`write_tracking` writes the group into a file being written,
:func:`save_tracking` replaces it in an existing results file (atomically),
:func:`read_tracking` reads it back; :func:`write_kinetics_csv` and
:func:`read_kinetics_csv` handle the CSV tables.

Layout of the ``/tracking`` group of a results file (5D results only)::

    /tracking/                      attrs: params (JSON: the linking
                                    parameters), units (JSON: column units)
        track           int32 (N,)  track id of each /clusters row (row
                                    offsets[t] + i is label i + 1 of step t),
                                    so the persistent-id map of step t is
                                    concat([0], track[offsets[t]:offsets[t+1]])[labels[t]]
        events/                     one row per event, sorted by time
            time        int32 (E,)  first time step showing the change
            kind        str (E,)    appear, split, merge, reappear, disappear
            track       int32 (E,)
            other       int32 (E,)  merge: merged into track; split: split
                                    off track; reappear: steps missed
        kinetics/                   one row per (track, step) present
            track, step, time, area_px, area, eq_radius, mean_intensity,
            mean_similarity, orientation
        rates/                      one row per track
            track, first_step, last_step, n_steps, first_time, last_time,
            area_first, area_last, growth_rate, radial_rate, rotation_rate
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from ..core.tracking import Kinetics, Tracking

GROUP = "tracking"


def write_tracking(f, tracking: Tracking, kinetics: Kinetics | None = None) -> None:
    """Write ``tracking`` (and ``kinetics``) into the open results file ``f``.

    Examples
    --------
    >>> with h5py.File("results.h5", "a") as f:  # doctest: +SKIP
    ...     write_tracking(f, tracking, kinetics)
    """
    import h5py

    offsets = f["clusters/offsets"][()]
    counts = np.diff(offsets)
    mine = [len(a) for a in tracking.track_of]
    if len(mine) != len(counts) or any(a != b for a, b in zip(mine, counts, strict=True)):
        raise ValueError(
            f"the tracking has {mine} clusters per step but the results hold {counts.tolist()}"
        )
    if GROUP in f:
        del f[GROUP]
    g = f.create_group(GROUP)
    g.attrs["params"] = json.dumps(tracking.params, sort_keys=True)
    g.attrs["layout"] = "track[offsets[t] + i] is the track id of label i + 1 at step t"
    g.create_dataset(
        "track",
        data=np.concatenate([*tracking.track_of, np.zeros(0, np.int32)]).astype(np.int32),
    )
    ev = g.create_group("events")
    for key, values in tracking.events.items():
        if key == "kind":
            ev.create_dataset(key, data=values.astype(object), dtype=h5py.string_dtype())
        else:
            ev.create_dataset(key, data=np.asarray(values))
    if kinetics is not None:
        g.attrs["units"] = json.dumps(kinetics.units, sort_keys=True)
        for name, table in (("kinetics", kinetics.table), ("rates", kinetics.rates)):
            sub = g.create_group(name)
            for key, values in table.items():
                sub.create_dataset(key, data=np.asarray(values))


def save_tracking(
    path: str | os.PathLike, tracking: Tracking, kinetics: Kinetics | None = None
) -> Path:
    """Replace the ``/tracking`` group of an existing results file, atomically.

    The file is copied to a temporary file in the same directory, the group
    written there, and the copy renamed over the original.

    Parameters
    ----------
    path : str or Path
        A 5D results file written by :func:`napari_stemcluster.io.write_results`.
    tracking : Tracking
        Its steps and clusters per step must match the file's.
    kinetics : Kinetics, optional

    Returns
    -------
    Path

    Examples
    --------
    >>> save_tracking("series.h5", tracking, kinetics)  # doctest: +SKIP
    PosixPath('series.h5')
    """
    import shutil

    import h5py

    from ._lazy import close_cached_handles
    from .errors import StemFileError
    from .output import atomic_output
    from .results import is_results_file

    path = Path(os.path.abspath(path))
    if not is_results_file(path):
        raise StemFileError(f"{path}: not a napari-stemcluster results file")
    with atomic_output(path) as tmp:  # a changed copy, renamed over the file
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            try:
                write_tracking(f, tracking, kinetics)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        close_cached_handles(path)  # readers must reopen the new file
    return path


def read_tracking(f, labels: np.ndarray) -> tuple[Tracking | None, Kinetics | None]:
    """The tracking and kinetics stored in the open results file ``f``.

    Returns ``(None, None)`` when the file holds none.

    Examples
    --------
    >>> with h5py.File("results.h5", "r") as f:  # doctest: +SKIP
    ...     tracking, kinetics = read_tracking(f, f["labels"][()])
    """
    if GROUP not in f:
        return None, None
    g = f[GROUP]
    offsets = f["clusters/offsets"][()]
    track = g["track"][()]
    steps = range(len(offsets) - 1)
    track_of = [track[offsets[t] : offsets[t + 1]].astype(np.int32) for t in steps]
    ev = g["events"]
    events = {
        "time": ev["time"][()].astype(np.int32),
        "kind": np.array([_text(k) for k in ev["kind"][()]], "<U9"),
        "track": ev["track"][()].astype(np.int32),
        "other": ev["other"][()].astype(np.int32),
    }
    params = json.loads(_text(g.attrs.get("params", "{}")))
    tracking = Tracking(track_of=track_of, step_labels=labels, events=events, params=params)
    kinetics = None
    if "kinetics" in g:
        kinetics = Kinetics(
            table={k: g["kinetics"][k][()] for k in _ordered(g["kinetics"])},
            rates={k: g["rates"][k][()] for k in _ordered(g["rates"])},
            units=json.loads(_text(g.attrs.get("units", "{}"))),
        )
    return tracking, kinetics


_ORDER = (
    "track",
    "step",
    "time",
    "first_step",
    "last_step",
    "n_steps",
    "first_time",
    "last_time",
    "area_px",
    "area",
    "area_first",
    "area_last",
    "eq_radius",
    "mean_intensity",
    "mean_similarity",
    "orientation",
    "growth_rate",
    "radial_rate",
    "rotation_rate",
)


def _ordered(group) -> list[str]:
    keys = list(group.keys())
    return sorted(keys, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _csv_text(table: dict, units: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = list(table)
    w.writerow([f"{k} ({units[k]})" if units.get(k) else k for k in keys])
    n = len(next(iter(table.values()))) if table else 0
    for i in range(n):
        row = []
        for k in keys:
            v = table[k][i]
            if isinstance(v, (float, np.floating)):
                row.append("" if not np.isfinite(v) else repr(float(v)))
            else:
                row.append(str(v))
        w.writerow(row)
    return buf.getvalue()


def _write_atomic(path: Path, text: str) -> Path:
    from .output import atomic_output

    path = Path(os.path.abspath(path))
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_kinetics_csv(
    path: str | os.PathLike, kinetics: Kinetics, tracking: Tracking | None = None
) -> list[Path]:
    """Write the kinetics as CSV files, atomically.

    ``path`` (e.g. ``kinetics.csv``) gets one row per grain and time step;
    ``<stem>_rates.csv`` one row per grain; with ``tracking``,
    ``<stem>_events.csv`` the events. Column headers carry the units, e.g.
    ``area (nm^2)``; unknown values are empty.

    Returns
    -------
    list of Path
        The files written.

    Examples
    --------
    >>> write_kinetics_csv("kinetics.csv", kinetics, tracking)  # doctest: +SKIP
    [PosixPath('kinetics.csv'), PosixPath('kinetics_rates.csv'), PosixPath('kinetics_events.csv')]
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        path = path.with_suffix(".csv")
    if not path.parent.resolve().is_dir():
        raise FileNotFoundError(f"{path.parent}: directory does not exist")
    out = [_write_atomic(path, _csv_text(kinetics.table, kinetics.units))]
    rates = path.with_name(f"{path.stem}_rates.csv")
    out.append(_write_atomic(rates, _csv_text(kinetics.rates, kinetics.units)))
    if tracking is not None:
        events = path.with_name(f"{path.stem}_events.csv")
        out.append(_write_atomic(events, _csv_text(tracking.events, {})))
    return out


def read_kinetics_csv(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a table written by :func:`write_kinetics_csv` back into columns and units.

    Examples
    --------
    >>> table, units = read_kinetics_csv("kinetics.csv")  # doctest: +SKIP
    """
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise ValueError(f"{path}: empty CSV file")
    names, units = [], {}
    for h in rows[0]:
        name, _, unit = h.partition(" (")
        names.append(name)
        if unit:
            units[name] = unit.rstrip(")")
    table = {}
    for j, name in enumerate(names):
        col = [r[j] for r in rows[1:]]
        try:
            table[name] = np.array([int(v) for v in col], np.int64)
        except ValueError:
            try:
                table[name] = np.array([float(v) if v else np.nan for v in col])
            except ValueError:
                table[name] = np.array(col)
    return table, units

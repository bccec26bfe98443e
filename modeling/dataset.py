"""Model-ready datasets from the lake: one row per patient, explicit feature sets, a hash.

A dataset joins, per patient, the clinical variables, the cycle-1 dosimetry, the cumulative
BED of all cycles, the administered activity and the features of ``theralake features``, then
keeps the columns of a named feature set and the task's target. Column names::

    clinical/<variable>[=<level>]          administration/activity_mbq
    dosimetry/<voi>/<quantity>             dosimetry_total/<voi>/bed_gy
    dosimetry/lesions/<summary>            <image_kind>/<voi>/<feature_class>/<feature>

Lesion-level columns (``lesion_001``...) are left out: lesions are not the same across
patients. ``tumor_total`` (their union) carries them, and so do the per-lesion summaries of
the cycle: ``dosimetry/lesions/count`` and the minimum, median and maximum lesion absorbed
dose (``min_absorbed_dose_gy``...: the least-treated lesion is where progression starts).

A feature set names groups (``clinical+tumour_dose``); every group must resolve to at least
one usable column, or the dataset is refused with the reason: a model silently trained
without its named group is not the model asked for.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sksurv.util import Surv

from theralake.features.job import wide
from theralake.lake import Lake
from theralake.lake.views import current, preferred_dosimetry, therapy_administrations
from theralake.settings import load_settings

log = logging.getLogger(__name__)

DOSIMETRY_QUANTITIES = ("absorbed_dose_gy", "dose_per_activity_gy_per_gbq", "bed_gy",
                        "max_dose_gy", "mass_g", "tia_mbq_h")
MAX_LEVELS = 10


class DatasetError(ValueError):
    """The lake cannot give the dataset asked for (the message says why)."""


def load_modeling_config(path: str | Path | None = None) -> dict:
    """The packaged modelling settings, updated by a user YAML file."""
    try:
        return load_settings("theralake.modeling", "data/modeling_default.yaml", path)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc


@dataclass
class Dataset:
    """``X`` (index: patient_id), ``y`` and where they come from."""

    task: str
    kind: str  # survival | binary | regression
    X: pd.DataFrame
    y: np.ndarray | pd.DataFrame
    feature_set: str
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def groups(self) -> np.ndarray:
        """The patient of each row (splits never put a patient on both sides)."""
        return self.X.index.to_numpy()

    @property
    def n_events(self) -> int:
        if self.kind == "survival":
            return int(self.y["event"].sum())
        if self.kind == "binary":
            y = np.asarray(self.y)
            return int(min(y.sum(), len(y) - y.sum()))
        return len(self.X)

    @property
    def hash(self) -> str:
        """SHA-256 of the columns, rows and values of X and y (the frozen snapshot's id)."""
        h = hashlib.sha256()
        h.update("\x1f".join(map(str, self.X.columns)).encode())
        h.update(pd.util.hash_pandas_object(self.X, index=True).to_numpy().tobytes())
        y = self.y if isinstance(self.y, pd.DataFrame) else pd.DataFrame(np.asarray(self.y))
        h.update(pd.util.hash_pandas_object(y, index=False).to_numpy().tobytes())
        return h.hexdigest()

    def frame(self) -> pd.DataFrame:
        """X and y side by side (y columns prefixed ``target:``), as snapshotted."""
        y = self.y if isinstance(self.y, pd.DataFrame) else pd.DataFrame(
            np.asarray(self.y).tolist() if self.kind == "survival" else np.asarray(self.y),
            columns=["event", "time_d"] if self.kind == "survival" else ["label"],
            index=self.X.index)
        y = y.set_axis(self.X.index)
        return pd.concat([self.X, y.add_prefix("target:")], axis=1)


def patient_frame(lake: Lake, config: dict | None = None, cycle: int = 1,
                  patient_id: str | None = None) -> pd.DataFrame:
    """Every candidate column, one row per patient with a ``cycle`` therapy (or clinical
    data), index ``patient_id``; only ``patient_id``'s row when given."""
    config = config or load_modeling_config()
    only = _Only(patient_id)
    parts = [_clinical(lake, only), _dosimetry(lake, config["dosimetry_methods"], cycle, only),
             _administration(lake, cycle, only), _features(lake, cycle, only)]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    df = pd.concat(parts, axis=1).sort_index()
    df.index.name = "patient_id"
    keep = [c for c in df.columns if "/lesion_" not in c]
    return df[keep]


@dataclass
class _Only:
    """A WHERE clause (and its parameters) restricting reads to one patient, or to none."""

    patient_id: str | None

    def where(self, clause: str | None = None, params: list | None = None
              ) -> tuple[str | None, list]:
        if self.patient_id is None:
            return clause, list(params or [])
        mine = "patient_id = ?"
        return (f"{clause} AND {mine}" if clause else mine), [*(params or []),
                                                              self.patient_id]


def _clinical(lake: Lake, only: _Only) -> pd.DataFrame:
    df = current(lake.read("clinical", *only.where()), ["patient_id", "variable"])
    if df.empty:
        return pd.DataFrame()
    num = df[df.value_num.notna()].pivot_table(index="patient_id", columns="variable",
                                               values="value_num", aggfunc="last")
    out = [num.add_prefix("clinical/")]
    text = df[df.value_num.isna() & df.value_text.notna()]
    for var, g in text.groupby("variable"):
        levels = sorted(g.value_text.unique())
        if len(levels) > MAX_LEVELS:
            log.info("clinical/%s: %d levels, not one-hot encoded", var, len(levels))
            continue
        last = g.groupby("patient_id").value_text.last()
        for level in levels:
            out.append((last == level).astype(float).rename(f"clinical/{var}={level}"))
    return pd.concat(out, axis=1)


def _dosimetry(lake: Lake, methods: list[str], cycle: int, only: _Only) -> pd.DataFrame:
    df = lake.read("organ_dosimetry", *only.where())
    if df.empty:
        return pd.DataFrame()
    df = preferred_dosimetry(df, methods)
    now = df[df.cycle == cycle]
    wide = now.pivot_table(index="patient_id", columns="voi", values=list(DOSIMETRY_QUANTITIES),
                           aggfunc="last")
    wide.columns = [f"dosimetry/{voi}/{q}" for q, voi in wide.columns]
    total = df.groupby(["patient_id", "voi"]).bed_gy.sum().unstack()
    total.columns = [f"dosimetry_total/{voi}/bed_gy" for voi in total.columns]
    return pd.concat([wide, total, _lesion_summaries(now)], axis=1)


def _lesion_summaries(rows: pd.DataFrame) -> pd.DataFrame:
    """Per patient: the number of lesions with a dose and their minimum, median and maximum
    absorbed dose in the cycle."""
    lesions = rows[rows.voi.str.startswith("lesion_") & rows.absorbed_dose_gy.notna()]
    if lesions.empty:
        return pd.DataFrame()
    dose = lesions.groupby("patient_id").absorbed_dose_gy
    return pd.DataFrame({"dosimetry/lesions/count": dose.size().astype(float),
                         "dosimetry/lesions/min_absorbed_dose_gy": dose.min(),
                         "dosimetry/lesions/median_absorbed_dose_gy": dose.median(),
                         "dosimetry/lesions/max_absorbed_dose_gy": dose.max()})


def _administration(lake: Lake, cycle: int, only: _Only) -> pd.DataFrame:
    df = therapy_administrations(lake, cycle, only.patient_id)
    if df.empty:
        return pd.DataFrame()
    return df.set_index("patient_id").activity_mbq.rename(
        "administration/activity_mbq").to_frame()


def _features(lake: Lake, cycle: int, only: _Only) -> pd.DataFrame:
    df = wide(lake, *only.where("cycle = ? AND feature_class NOT LIKE '%:%'", [cycle]))
    if df.empty:
        return df
    return df.reset_index(level="cycle", drop=True)


def resolve_feature_set(spec: str, config: dict) -> list[str]:
    """Glob patterns of a feature set: names from the config joined by ``+``, or a YAML file
    with ``include`` (and optional ``exclude``, given with a leading ``!``).

    Raises:
        DatasetError: an unknown name.
    """
    return [p for patterns in feature_groups(spec, config).values() for p in patterns]


def feature_groups(spec: str, config: dict) -> dict[str, list[str]]:
    """The named groups of a feature set and their glob patterns (a YAML file: one group,
    its include and ``!`` exclude patterns).

    Raises:
        DatasetError: an unknown name.
    """
    path = Path(spec)
    if spec.endswith((".yaml", ".yml")) and path.is_file():
        doc = yaml.safe_load(path.read_text()) or {}
        return {path.name: list(doc.get("include", []))
                + [f"!{p}" for p in doc.get("exclude", [])]}
    sets = config["feature_sets"]
    groups: dict[str, list[str]] = {}
    for name in spec.split("+"):
        if name not in sets:
            raise DatasetError(f"unknown feature set {name!r}; known: {', '.join(sorted(sets))} "
                               "(join names with '+', or give a YAML file with include:)")
        groups[name] = list(sets[name])
    return groups


def select_columns(columns: list[str], patterns: list[str]) -> list[str]:
    """Columns matching an include pattern and no ``!`` exclude pattern, in pattern order."""
    include = [p for p in patterns if not p.startswith("!")]
    exclude = [p[1:] for p in patterns if p.startswith("!")]
    chosen: list[str] = []
    for p in include:
        for c in columns:
            if fnmatch.fnmatchcase(c, p) and c not in chosen and \
                    not any(fnmatch.fnmatchcase(c, e) for e in exclude):
                chosen.append(c)
    return chosen


def build_dataset(lake: Lake, task: str, features: str | None = None,
                  config: dict | None = None) -> Dataset:
    """The dataset of ``task`` (a key of the config's ``tasks``) with the feature set
    ``features`` (default: the task's).

    Raises:
        DatasetError: unknown task or feature set, no patient with the target, a feature the
            set names exactly that is constant or missing, a forbidden (leaking) column,
            too few events.
    """
    config = config or load_modeling_config()
    tasks = config["tasks"]
    if task not in tasks:
        raise DatasetError(f"unknown task {task!r}; known: {', '.join(sorted(tasks))}")
    spec = tasks[task]
    feature_set = features or spec["features"]
    patterns = resolve_feature_set(feature_set, config)
    frame = patient_frame(lake, config)
    if frame.empty:
        raise DatasetError(f"the lake at {lake.path} has no clinical, dosimetry or feature rows")
    y, index = _target(lake, task, spec, frame)
    X = frame.loc[index, select_columns(list(frame.columns), patterns)]
    forbidden = select_columns(list(X.columns), spec.get("forbid", []))
    if forbidden:
        raise DatasetError(f"task {task}: feature set {feature_set!r} includes columns measured "
                           f"after therapy that would leak the target: {forbidden[:5]}")
    X, dropped = _drop_uninformative(X, patterns)
    if X.shape[1] == 0:
        raise DatasetError(f"task {task}: feature set {feature_set!r} matches no usable column "
                           f"of the lake (patterns {patterns})")
    _check_groups(task, feature_set, feature_groups(feature_set, config), frame, X, dropped)
    ds = Dataset(task, spec["kind"], X, y, feature_set, dropped)
    _check_events(ds, config)
    return ds


def _check_groups(task: str, feature_set: str, groups: dict[str, list[str]],
                  frame: pd.DataFrame, X: pd.DataFrame, dropped: dict[str, str]) -> None:
    """Refuse a dataset in which a named group of its feature set has no usable column."""
    for name, patterns in groups.items():
        excludes = [p for p in patterns if p.startswith("!")]
        if select_columns(list(X.columns), patterns) or not [p for p in patterns
                                                             if p not in excludes]:
            continue
        found = select_columns(list(frame.columns), patterns)
        why = ("; ".join(f"{c}: {dropped.get(c, 'no value for these patients')}"
                         for c in found[:5]) if found else
               f"no column of the lake matches {patterns}")
        raise DatasetError(f"task {task}: feature group {name!r} of {feature_set!r} gives no "
                           f"usable column ({why}); the model would be trained without it. "
                           "Run the step that fills it (e.g. theralake dosimetry for "
                           "tumour_dose), or choose another feature set")


def _target(lake: Lake, task: str, spec: dict, frame: pd.DataFrame
            ) -> tuple[np.ndarray | pd.DataFrame, pd.Index]:
    kind = spec["kind"]
    if kind == "regression":
        cols = [f"dosimetry/{v}/dose_per_activity_gy_per_gbq" for v in spec["targets"]]
        have = [c for c in cols if c in frame.columns]
        if not have:
            raise DatasetError(f"task {task}: no cycle-1 dose per GBq in organ_dosimetry for "
                               f"{spec['targets']}")
        y = frame[have].dropna(how="all")
        y.columns = [c.split("/")[1] for c in have]
        return y, y.index
    out = current(lake.read("outcomes", "endpoint = ?", [spec["endpoint"]]), ["patient_id"])
    out = out.set_index("patient_id")
    out = out[out.index.isin(frame.index)]
    if kind == "survival":
        out = out[out.time_d.notna() & out.event.notna()]
    else:
        out = out[out.value.notna()]
    if out.empty:
        raise DatasetError(f"task {task}: no patient of the lake has the endpoint "
                           f"{spec['endpoint']!r} in outcomes together with features")
    if kind == "survival":
        return Surv.from_arrays(out.event.astype(bool), out.time_d, "event", "time_d"), out.index
    return (out.value >= spec.get("positive_from", 1)).astype(int).to_numpy(), out.index


def _drop_uninformative(X: pd.DataFrame, patterns: list[str]) -> tuple[pd.DataFrame, dict]:
    """Drop all-missing and constant columns; refuse those a pattern names exactly."""
    dropped = {}
    for c in X.columns:
        values = X[c].dropna()
        if values.empty:
            dropped[c] = "all values missing"
        elif values.nunique() == 1:
            dropped[c] = f"constant ({values.iloc[0]:g})"
    named = [c for c in dropped if c in patterns]
    if named:
        raise DatasetError("; ".join(f"feature {c}: {dropped[c]}" for c in named))
    for c, why in dropped.items():
        log.info("dataset: dropped %s (%s)", c, why)
    return X.drop(columns=list(dropped)), dropped


def _check_events(ds: Dataset, config: dict) -> None:
    v = config["validation"]
    if ds.kind == "regression":
        if len(ds.X) < v["outer_folds"] * 2:
            raise DatasetError(f"task {ds.task}: {len(ds.X)} patients are too few for "
                               f"{v['outer_folds']}-fold validation")
        return
    what = "events" if ds.kind == "survival" else "patients in the smaller class"
    n_candidates = min(ds.X.shape[1], config["preprocessing"]["max_features"])
    need = max(v["min_events"], v["min_events_per_feature"] * n_candidates)
    if ds.n_events < need:
        raise DatasetError(
            f"task {ds.task}: {ds.n_events} {what} among {len(ds.X)} patients are too few for "
            f"{n_candidates} features (at least {v['min_events_per_feature']} per feature and "
            f"{v['min_events']} in all: {need}); use fewer features (max_features) or more "
            "patients")

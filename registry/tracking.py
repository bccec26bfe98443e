"""MLflow tracking and model registry for a lake.

By default every lake carries its own MLflow store: ``<lake>/mlflow/mlflow.db`` (SQLite: runs,
metrics and the model registry) and ``<lake>/mlflow/artifacts`` (logged files and models). Set
``MLFLOW_TRACKING_URI`` (and optionally ``MLFLOW_REGISTRY_URI``) to use a server instead; then
the server decides where artifacts go.

MLflow records artifact locations as absolute ``file://`` URIs. A lake copied or moved
elsewhere has them pointing at its old folder, so opening a lake's store relocates every
location under an ``.../mlflow/artifacts`` that is not its own to its own (experiments, runs,
model versions, logged models); the ``Default`` experiment, which MLflow puts under the
working directory's ``mlruns``, is kept in the lake too.

Usage (any training code)::

    from theralake.registry.tracking import start_run

    with start_run(lake, "survival", run_name="coxph") as run:
        mlflow.log_params(...)
        mlflow.log_metrics(...)
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its INFO lines break progress bars

import mlflow  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

T = TypeVar("T")

__all__ = ["ModelNotFoundError", "artifact_root", "client", "download_model", "experiment_id",
           "lake_store_uri", "mlflow_dir", "model_version", "registry_uri",
           "start_run", "tracking_uri", "use_lake"]


def _lake_path(lake: object) -> Path:
    """A :class:`~theralake.lake.Lake` or a lake folder, as an absolute path."""
    return Path(getattr(lake, "path", lake)).resolve()  # type: ignore[arg-type]


def mlflow_dir(lake: object) -> Path:
    """The lake's MLflow folder (``<lake>/mlflow``)."""
    return _lake_path(lake) / "mlflow"


def artifact_root(lake: object) -> str:
    """URI of the lake's artifact folder (``file:///<lake>/mlflow/artifacts``)."""
    return (mlflow_dir(lake) / "artifacts").as_uri()


def lake_store_uri(lake: object) -> str:
    """URI of the lake's own SQLite store (``sqlite:///<lake>/mlflow/mlflow.db``)."""
    return f"sqlite:///{(mlflow_dir(lake) / 'mlflow.db').as_posix()}"


def tracking_uri(lake: object) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the lake's SQLite store (its folder is created).

    Args:
        lake: a :class:`~theralake.lake.Lake` or the path of a lake folder.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = lake_store_uri(lake)
    if uri not in _READY:
        try:
            (mlflow_dir(lake) / "artifacts").mkdir(parents=True, exist_ok=True)
            _create_store(mlflow_dir(lake), uri)
        except OSError:  # a read-only lake (an archive, a read-only mount)
            return _read_only_store(mlflow_dir(lake))
    return uri


def _read_only_store(folder: Path) -> str:
    """The SQLite store of a read-only lake, opened read-only.

    Raises:
        ModelNotFoundError: the lake has no store (no model was ever trained in it).
    """
    db = folder / "mlflow.db"
    if not db.exists():
        raise ModelNotFoundError(f"{folder.parent} is read-only and holds no model registry")
    # the driver-qualified scheme: with plain ``sqlite:///file:...`` MLflow makes the parent
    # folders of ``file:/...`` read as a relative path, an empty ``file:`` tree in the cwd
    return f"sqlite+pysqlite:///file:{db.as_posix()}?mode=ro&uri=true"


_READY: set[str] = set()


def _create_store(folder: Path, uri: str) -> None:
    """Create (or migrate) the SQLite store under a lock, once per process: workers opening
    a new lake at the same time would race on MLflow's schema migration. A new store is built
    under a temporary name and renamed into place, so a process killed while MLflow creates
    its tables (a minute's migrations on a slow disk) leaves no half-made store behind."""
    import fcntl

    with open(folder / ".create.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            db = folder / "mlflow.db"
            if not db.exists():
                for stale in folder.glob(".mlflow.db.tmp-*"):
                    stale.unlink(missing_ok=True)
                tmp = folder / f".mlflow.db.tmp-{os.getpid()}"
                tmp_uri = f"sqlite:///{tmp.as_posix()}"
                MlflowClient(tracking_uri=tmp_uri, registry_uri=tmp_uri).search_experiments(
                    max_results=1)
                os.replace(tmp, db)
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
            relocate_artifacts(folder)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    _READY.add(uri)


#: the store's columns holding an artifact location
_LOCATIONS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
              ("model_versions", "storage_location"), ("logged_models", "artifact_location"))
_ARTIFACTS = "/mlflow/artifacts"


def relocate_artifacts(folder: Path) -> int:
    """Point every artifact location of the SQLite store in ``folder`` at ``folder``'s own
    ``artifacts`` (a lake copied or moved keeps its models); returns the rows changed."""
    here = (folder / "artifacts").as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as con, con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        changed += con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE name = 'Default' AND "
            "substr(artifact_location, 1, ?) != ?", (f"{here}/0", len(here), here)).rowcount
        roots = set()
        for table, column in _LOCATIONS:
            if table in tables:
                for (location,) in con.execute(
                        f"SELECT DISTINCT {column} FROM {table} WHERE instr({column}, ?) > 0",
                        (_ARTIFACTS,)):
                    roots.add(location[:location.index(_ARTIFACTS) + len(_ARTIFACTS)])
        for old in roots - {here}:
            for table, column in _LOCATIONS:
                if table in tables:
                    changed += con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE substr({column}, 1, ?) = ?",
                        (here, len(old) + 1, len(old), old)).rowcount
    return changed


def registry_uri(lake: object) -> str:
    """``$MLFLOW_REGISTRY_URI`` if set, else the tracking URI (same store)."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri(lake)


def client(lake: object) -> MlflowClient:
    """An :class:`MlflowClient` on the lake's tracking store and model registry."""
    return MlflowClient(tracking_uri=tracking_uri(lake), registry_uri=registry_uri(lake))


def experiment_id(lake: object, experiment: str) -> str:
    """Id of the named experiment, created if missing (artifacts under the lake's folder when
    the lake's own store is used)."""
    c = client(lake)
    found = c.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = artifact_root(lake) if tracking_uri(lake) == lake_store_uri(lake) else None
    try:
        return c.create_experiment(experiment, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        found = c.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def use_lake(lake: object) -> Iterator[str]:
    """Point MLflow's process-wide (fluent) tracking and registry URIs to the lake's store for
    the duration of the block, then restore them (and the environment variables MLflow sets)
    so that several lakes can be used in one process. Yields the tracking URI."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in _URI_VARIABLES}
    previous = (getattr(tracking_utils, "_tracking_uri", None),
                getattr(registry_utils, "_registry_uri", None))
    uri, reg = tracking_uri(lake), registry_uri(lake)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(reg)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])  # type: ignore[arg-type]
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def start_run(lake: object, experiment: str, run_name: str | None = None,
              tags: dict[str, str] | None = None) -> Iterator[Run]:
    """A fluent MLflow run in the lake's store: ``mlflow.log_*`` and ``mlflow.<flavor>.log_model``
    calls inside the block go to it (experiment created if missing). The run is tagged with
    the lake snapshot it read (``lake_snapshot``; the newest now unless the tags name one)."""
    snapshot = getattr(lake, "snapshot", None)
    if callable(snapshot) and "lake_snapshot" not in (tags or {}):
        tags = {**(tags or {}), "lake_snapshot": str(snapshot())}
    with use_lake(lake):
        exp = experiment_id(lake, experiment)
        with mlflow.start_run(experiment_id=exp, run_name=run_name, tags=tags) as run:
            yield run


def set_alias(lake: object, name: str, version: str, alias: str,
              tags: dict[str, str] | None = None) -> None:
    """Point ``name@alias`` to ``version`` and tag that version."""
    c = client(lake)
    c.set_registered_model_alias(name, alias, version)
    for key, value in (tags or {}).items():
        c.set_model_version_tag(name, version, key, value)


class ModelNotFoundError(LookupError):
    """No registered model (or no version under the alias) in the registry."""


def model_version(lake: object, name: str, alias: str) -> ModelVersion:
    """The registered model version that ``name@alias`` points to.

    Raises:
        ModelNotFoundError: the model is not registered or has no such alias (the message
            lists the aliases it has).
    """
    c = client(lake)
    where = f"in the model registry at {registry_uri(lake)}"
    try:
        model = c.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelNotFoundError(f"no registered model {name!r} {where}") from None
    aliases = dict(getattr(model, "aliases", None) or {})
    if alias not in aliases:
        have = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
        raise ModelNotFoundError(f"registered model {name!r} has no alias {alias!r} {where} "
                                 f"(its aliases: {have})")
    return c.get_model_version_by_alias(name, alias)


def download_model(lake: object, name: str, alias: str, dst: str | Path
                   ) -> tuple[Path, ModelVersion]:
    """Download the MLflow model ``name@alias`` into the folder ``dst``.

    Returns the model's folder and the version the alias pointed to (resolved once).
    """
    version = model_version(lake, name, alias)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    with use_lake(lake):
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version.version}", dst_path=str(dst))
    return Path(path), version


def load_by_spec(lake: object, spec: str, load: Callable[[Path], T], weights: str,
                 train_hint: str) -> tuple[T, str]:
    """The model ``spec`` names, loaded by ``load(folder)``, with the name it is recorded
    under: a folder of weights (``weights {folder name}``), or ``name[@alias]`` in the lake's
    registry (alias champion by default; ``{name} v{version}``). ``weights`` is a file the
    model's folder holds (it finds the folder among the downloaded artifacts).

    Raises:
        ModelNotFoundError: no such model or alias (the message adds ``train_hint``).
        FileNotFoundError: the registered model holds no such weights.
    """
    if Path(spec).is_dir():
        return load(Path(spec)), f"weights {Path(spec).name}"
    name, _, alias = spec.partition("@")
    with tempfile.TemporaryDirectory(prefix="theralake-model-") as tmp:
        try:
            folder, version = download_model(lake, name, alias or "champion", tmp)
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(f"{exc}; {train_hint}, or give a weights folder") from None
        found = sorted(p.parent for p in Path(folder).rglob(weights))
        if not found:
            raise FileNotFoundError(f"model {name} version {version.version} holds no "
                                    f"{weights}")
        return load(found[0]), f"{name} v{version.version}"

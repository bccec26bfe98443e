"""The lake's MLflow store: where runs and artifacts go, and that nothing leaks between lakes."""

from __future__ import annotations

import os

import mlflow
import pytest

from theralake.lake import Lake
from theralake.registry import tracking

URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _lake_store(monkeypatch):
    for var in URI_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def store_lake(tmp_path_factory) -> Lake:
    """A lake whose MLflow store is created once (creating one takes seconds)."""
    lake = Lake(tmp_path_factory.mktemp("tracking") / "lake")
    with pytest.MonkeyPatch.context() as mp:
        for var in URI_VARS:
            mp.delenv(var, raising=False)
        tracking.experiment_id(lake, "warm-up")
    return lake


def test_tracking_uri_is_the_lake_store_unless_the_environment_names_one(lake, monkeypatch):
    uri = tracking.tracking_uri(lake)
    assert uri == f"sqlite:///{lake.path}/mlflow/mlflow.db" == tracking.lake_store_uri(lake)
    assert (lake.path / "mlflow" / "artifacts").is_dir()
    assert tracking.tracking_uri(lake.path) == uri  # a lake or its folder
    assert tracking.registry_uri(lake) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking.tracking_uri(lake) == "http://mlflow.example:5000"
    assert tracking.registry_uri(lake) == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///registry.db")
    assert tracking.registry_uri(lake) == "sqlite:///registry.db"


def test_telemetry_is_off():
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"


def test_start_run_logs_to_the_lake_and_restores_mlflows_state(store_lake):
    before = mlflow.get_tracking_uri()
    with tracking.start_run(store_lake, "survival", run_name="coxph", tags={"k": "v"}) as run:
        assert mlflow.get_tracking_uri() == tracking.lake_store_uri(store_lake)
        mlflow.log_metric("c_index", 0.7)
        mlflow.log_dict({"a": 1}, "table.json")
    assert not any(os.environ.get(v) for v in URI_VARS), "MLflow's URI variables leaked"
    assert mlflow.get_tracking_uri() == before
    client = tracking.client(store_lake)
    exp = client.get_experiment_by_name("survival")
    assert exp.artifact_location == (store_lake.path / "mlflow" / "artifacts").as_uri()
    got = client.get_run(run.info.run_id)
    assert got.data.metrics["c_index"] == 0.7 and got.data.tags["k"] == "v"
    assert got.info.run_name == "coxph"
    assert list((store_lake.path / "mlflow" / "artifacts").rglob("table.json"))
    assert tracking.experiment_id(store_lake, "survival") == exp.experiment_id  # found again


def test_a_tracking_server_in_the_environment_wins_and_is_kept(store_lake, lake, monkeypatch,
                                                              tmp_path):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the cwd
    server = tracking.lake_store_uri(store_lake)  # stands in for the user's server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    with tracking.start_run(lake, "served", run_name="r") as run:
        mlflow.log_metric("m", 1.0)
    assert os.environ["MLFLOW_TRACKING_URI"] == server
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.client(store_lake).get_run(run.info.run_id).data.metrics["m"] == 1.0
    assert not (lake.path / "mlflow" / "mlflow.db").exists()  # nothing in the other lake
    exp = tracking.client(store_lake).get_experiment_by_name("served")
    assert str(lake.path) not in exp.artifact_location  # the server decides where they go


def test_an_unknown_model_or_alias_is_a_lookup_error(store_lake):
    with pytest.raises(tracking.ModelNotFoundError, match="no registered model 'nothing'"):
        tracking.model_version(store_lake, "nothing", "champion")
    client = tracking.client(store_lake)
    client.create_registered_model("empty-model")
    with pytest.raises(LookupError, match=r"no alias 'champion'.*its aliases: none"):
        tracking.model_version(store_lake, "empty-model", "champion")


def test_a_copied_lake_keeps_its_models_after_the_original_is_gone(tmp_path, monkeypatch):
    """Artifacts live in the lake and are found through the copy: train, copy the lake,
    delete the original, load the model from the copy (issue 19: absolute file:// URIs)."""
    import shutil

    import numpy as np
    from sklearn.linear_model import LinearRegression

    from theralake.registry.models import load_model

    monkeypatch.chdir(tmp_path)  # MLflow's Default experiment would go to ./mlruns
    original = Lake(tmp_path / "original" / "lake")
    with tracking.start_run(original, "theralake-test", run_name="fit") as run:
        X = np.arange(10.0).reshape(-1, 1)
        model = LinearRegression().fit(X, 2 * X.ravel() + 1)
        mlflow.sklearn.log_model(model, name="model", registered_model_name="test-model",
                                 serialization_format="cloudpickle")
    client = tracking.client(original)
    client.set_registered_model_alias("test-model", "candidate", "1")
    default = client.get_experiment_by_name("Default").artifact_location
    assert default.startswith((original.path / "mlflow" / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()
    copy = tmp_path / "copy" / "lake"
    shutil.copytree(original.path, copy)
    shutil.rmtree(tmp_path / "original")
    tracking._READY.clear()  # a new process opening the copy
    moved = Lake(copy, create=False)
    loaded, uri = load_model(moved, "test-model", "candidate", tmp_path / "dl")
    assert uri == "models:/test-model/1"
    assert loaded.predict(np.array([[4.0]]))[0] == pytest.approx(9.0)
    got = tracking.client(moved).get_run(run.info.run_id)
    assert got.info.artifact_uri.startswith((copy / "mlflow" / "artifacts").as_uri())


_DIE_WHILE_CREATING = """
import os, sys
import mlflow.store.db.utils as db_utils
from theralake.lake import Lake
from theralake.registry import tracking

def die(engine):  # MLflow's migrations, cut off: a leftover temporary table, then death
    with engine.begin() as con:
        con.exec_driver_sql("CREATE TABLE _alembic_tmp_experiment_tags (x INTEGER)")
    os._exit(9)

db_utils._initialize_tables = die
tracking.client(Lake(sys.argv[1], create=False)).search_experiments()
"""


def test_a_process_killed_while_creating_the_store_leaves_it_usable(tmp_path):
    """A worker killed while MLflow creates the lake's tables (a kill -9 of the run, the OOM
    killer) made every later opening fail ('table _alembic_tmp_experiment_tags already
    exists'): the store is now built under a temporary name and renamed into place."""
    import subprocess
    import sys

    lake = Lake(tmp_path / "lake")
    died = subprocess.run([sys.executable, "-c", _DIE_WHILE_CREATING, str(lake.path)],
                          capture_output=True, text=True, timeout=300)
    assert died.returncode == 9, died.stderr[-2000:]
    assert not (lake.path / "mlflow" / "mlflow.db").exists()
    tracking._READY.clear()
    assert tracking.client(lake).search_experiments()  # a fresh store, whole
    assert not list((lake.path / "mlflow").glob(".mlflow.db.tmp-*"))

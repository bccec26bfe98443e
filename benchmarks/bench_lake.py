"""Benchmark: the DuckLake lake against the Parquet-parts layout it replaced (issue 21).

The baseline is the previous lake itself: ``lake/store.py`` of commit 1adcfa5, loaded from git
and run beside today's. Both hold the same ``organ_dosimetry`` rows, written as tasks write
them (5 rows per write):

- parts: N Parquet parts, one per write (written directly, not timed);
- DuckLake as written: the same N files registered in one DuckLake table (what N commits
  leave before any compaction; ``ducklake_add_data_files``, so 100,000 need not be committed
  one by one); ``commit`` is the mean of 200 real commits on top of it;
- DuckLake compacted: the same rows after ``theralake lake compact`` (the state a nightly
  compaction keeps).

Above ``--files-max`` parts (10,000) only compacted DuckLake is measured, its rows appended
10,000 at a time: at 100,000 parts the parts layout took all 24 GB of the development machine
while being measured and the kernel killed it (written down in docs/scaling.md).

Printed per N: opening the lake, one write's append (its id check included) and three
everyday queries (a fresh process's first query, then the best of three).

    python benchmarks/bench_lake.py [--parts 1000 10000 100000] [--files-max 10000]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from theralake.lake import SCHEMAS, Lake, ducklake, stable_hash

BASELINE_COMMIT = "1adcfa5"
ROWS_PER_WRITE = 5  # VOIs of one patient-cycle
QUERIES = {
    "one patient's doses": "SELECT voi, absorbed_dose_gy FROM organ_dosimetry "
                           "WHERE patient_id = 'P00042'",
    "mean dose by VOI": "SELECT voi, avg(absorbed_dose_gy) FROM organ_dosimetry GROUP BY voi",
    "rows per cycle": "SELECT cycle, count(*) FROM organ_dosimetry GROUP BY cycle",
}


def baseline_lake_class() -> type:
    """The Parquet-parts ``Lake`` of the baseline commit, from git."""
    repo = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:lake/store.py"], cwd=repo,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "parts_store.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("parts_store", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Lake


def rows(write: int) -> list[dict]:
    return [{"id": stable_hash("od", write, v), "patient_id": f"P{write // 4:05d}",
             "cycle": 1 + write % 4, "voi": voi, "method": "vsv",
             "absorbed_dose_gy": 0.1 * (write % 97) + v, "input_ids": [], "params_hash": "b",
             "theralake_version": "bench"}
            for v, voi in enumerate(["kidney_left", "kidney_right", "liver", "spleen",
                                     "tumor_total"][:ROWS_PER_WRITE])]


def write_parts(folder: Path, n: int) -> list[Path]:
    """N Parquet parts of organ_dosimetry, as the baseline's appends leave them."""
    table_dir = folder / "tables" / "organ_dosimetry"
    table_dir.mkdir(parents=True, exist_ok=True)
    schema = SCHEMAS["organ_dosimetry"]
    out = []
    for write in range(n):
        path = table_dir / f"part-{stable_hash('part', write)[:24]}.parquet"
        pq.write_table(pa.Table.from_pylist(rows(write), schema=schema), path,
                       compression="zstd")
        out.append(path)
    return out


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(open_lake, n: int) -> dict[str, float]:
    """One task's append and the queries, on a lake opened afresh."""
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    lake = open_lake()
    out["open"] = time.perf_counter() - t0
    out["append"] = timed(lambda: lake.append("organ_dosimetry", rows(n + 1)))
    for name, query in QUERIES.items():
        fresh = open_lake()
        out[f"{name} (first)"] = timed(lambda q=query, f=fresh: f.sql(q))
        out[name] = timed(lambda q=query, f=fresh: f.sql(q), repeat=3 if n <= 10000 else 1)
    return out


def registered(folder: Path, parts: list[Path]) -> Lake:
    """A DuckLake lake whose organ_dosimetry holds the parts as its N data files."""
    lake = Lake(folder)
    table_dir = lake.path / ducklake.DATA / "main" / "organ_dosimetry"
    table_dir.mkdir(parents=True, exist_ok=True)
    con = ducklake.attach(lake.path)
    try:
        con.execute("BEGIN")
        for path in parts:  # the lake's own data folder holds them (a link each)
            os.link(path, table_dir / path.name)
            con.execute("CALL ducklake_add_data_files('lake', 'organ_dosimetry', ?)",
                        [(table_dir / path.name).as_posix()])
        con.execute("COMMIT")
    finally:
        con.close()
    return Lake(folder)


def commit_cost(lake: Lake, n: int, commits: int = 200) -> float:
    t0 = time.perf_counter()
    for write in range(commits):
        lake.append("organ_dosimetry", rows(n + 10 + write))
    return (time.perf_counter() - t0) / commits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--files-max", type=int, default=10000, help=(
        "above this many parts only compacted DuckLake is measured (its rows appended 10,000 "
        "at a time): at 100,000 parts the parts layout used all 24 GiB of this machine and "
        "the kernel killed it"))
    args = ap.parse_args()
    PartsLake = baseline_lake_class()
    for n in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            results = {}
            lake = Lake(root / "compacted")
            if n <= args.files_max:
                PartsLake(root / "parts")
                parts = write_parts(root / "parts", n)
                results["parts"] = measure(partial(PartsLake, root / "parts"), n)
                registered(root / "written", parts)
                results["DuckLake as written"] = measure(partial(Lake, root / "written"), n)
                results["DuckLake as written"]["commit (mean of 200)"] = commit_cost(
                    Lake(root / "written"), n)
                lake.append_parquet({"organ_dosimetry": parts})
            else:
                for start in range(0, n, 2000):
                    writes = range(start, min(n, start + 2000))
                    lake.append("organ_dosimetry", [r for w in writes for r in rows(w)])
            lake.compact(keep_snapshots_days=0)
            results["DuckLake compacted"] = measure(partial(Lake, root / "compacted"), n)
        print(f"\n== {n:,} parts ({n * ROWS_PER_WRITE:,} rows), seconds")
        names = list(results["DuckLake compacted"]) + ["commit (mean of 200)"]
        print(f"{'':32}" + "".join(f"{k:>22}" for k in results))
        for name in names:
            cells = [results[k].get(name) for k in results]
            print(f"{name:32}" + "".join(f"{'' if c is None else f'{c:.4f}':>22}"
                                          for c in cells))
        sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Contours drawn on cycle 1 only: cycle 2 and the pre-therapy PET/CT get them by registration,
and they match the synthetic truth of those CTs."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig
from theralake.synth.tissues import ORGAN_VOIS

PSEUDO = Pseudonymizer(key="transfer-test-key")
ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")


def _truth_labels(out, session: str) -> np.ndarray:
    df = pd.read_parquet(out / "truth" / "images" / "SYN0001.parquet")
    row = df[(df.session == session) & (df.kind == "labels")].iloc[0]
    x, y, z = row["shape"]
    raw = pa.decompress(row["voxels"], decompressed_size=x * y * z * 2,
                        codec=row["compression"], asbytes=True)
    return np.frombuffer(raw, dtype=np.dtype(row["dtype"])).reshape(z, y, x)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer_synth")
    generate_cohort(SynthConfig(patients=1, cycles=2, seed=11, small=True,
                                time_points_h=(4.0, 24.0, 96.0)), out, progress=False)
    for seg in [*out.glob("SYN0001/C2TP*/SEG"), *out.glob("SYN0001/PET0/SEG")]:
        shutil.rmtree(seg)  # contours on cycle 1 only
    lake = Lake(out / "lake")
    ingest(out, lake, IngestOptions(show_progress=False), PSEUDO)
    pid = PSEUDO.patient_id("SYN0001")
    config = load_config(registration="rigid", voxel_model="mono", method="ldm",
                         segmentation={"backend": "none"})
    first, second = run_cycle(lake, pid, 1, config), run_cycle(lake, pid, 2, config)
    return out, lake, pid, config, first, second


def _carried_onto(lake: Lake, ct: pd.Series) -> pd.DataFrame:
    return lake.read("vois", "image_id = ? AND source = 'transferred'", [ct.id])


@pytest.mark.parametrize("session, kind, cycle", [("C2TP1", "ct", 2), ("PET0", "pet", 1)])
def test_carried_organs_match_the_truth_of_their_ct(carried, session, kind, cycle):
    out, lake, pid, _, _, _ = carried
    images = lake.read("images", "patient_id = ?", [pid])
    if kind == "pet":
        pet = images[images.kind == "pet"].iloc[0]
        ct = images[(images.kind == "ct")
                    & (images.frame_of_reference_key == pet.frame_of_reference_key)].iloc[0]
    else:
        ct = images[(images.kind == "ct") & (images.cycle == cycle)].sort_values(
            "time_h").iloc[0]
    vois = _carried_onto(lake, ct).set_index("voi")
    assert set(ORGANS) <= set(vois.index)
    truth = _truth_labels(out, session)
    for organ in ORGANS:
        mask = Volume.from_row(vois.loc[organ].to_dict()).array > 0
        assert _dice(mask, np.isin(truth, ORGAN_VOIS[organ])) > 0.8, organ
    reg = lake.read("registrations", "fixed_image_id = ?", [ct.id]).iloc[0]
    assert not reg.failed and reg.ncc_after >= reg.ncc_before - 0.01


def test_cycle_2_doses_rest_on_the_carried_organs(carried):
    _, lake, pid, _, _, second = carried
    rows = pd.DataFrame(second.organ_rows).set_index("voi")
    assert set(ORGANS) <= set(rows.index)
    assert (rows.loc[list(ORGANS), "absorbed_dose_gy"] > 0).all()


def test_time_point_registrations_report_organ_dice(carried):
    _, lake, pid, _, _, _ = carried
    regs = lake.read("registrations", "patient_id = ? AND cycle = 1", [pid])
    pairs = regs.dropna(subset=["organ_dice_after"])
    assert len(pairs) >= 2  # the later time points onto the reference
    assert (pairs.organ_dice_after > 0.8).all()
    assert (pairs.organ_dice_after >= pairs.organ_dice_before - 0.02).all()


def test_a_rerun_carries_nothing_twice(carried):
    _, lake, pid, config, _, _ = carried
    before = len(lake.read("vois", "patient_id = ?", [pid]))
    run_cycle(lake, pid, 2, config)
    assert len(lake.read("vois", "patient_id = ?", [pid])) == before


def test_thresholded_lesions_keep_their_names_across_cycles():
    from types import SimpleNamespace

    from theralake.dosimetry.cycle_vois import lesion_names as _lesion_names

    def blob(z, y, x):
        m = np.zeros((20, 20, 40), bool)
        m[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] = True
        return m

    earlier = {"lesion_001": blob(5, 5, 5), "lesion_004": blob(10, 10, 30)}
    found = [SimpleNamespace(mask=blob(10, 11, 31)), SimpleNamespace(mask=blob(15, 15, 15)),
             SimpleNamespace(mask=blob(5, 6, 5))]
    # 4 mm voxels: the first and last lie within 20 mm of an earlier lesion, the middle is new
    assert _lesion_names(found, earlier, (4.0, 4.0, 4.0)) == ["lesion_004", "lesion_005",
                                                              "lesion_001"]
    assert _lesion_names(found[:1], {}, (4.0, 4.0, 4.0)) == ["lesion_001"]


def test_cycle_2_threshold_lesions_are_named_after_cycle_1(carried):
    _, lake, pid, config, _, _ = carried
    config = dict(config, lesions={**config["lesions"], "from_imported_vois": False})
    first, second = run_cycle(lake, pid, 1, config), run_cycle(lake, pid, 2, config)
    used = {r["input_ids"][-1] for r in first.organ_rows + second.organ_rows}  # VOI ids
    vois = lake.read("vois", "patient_id = ? AND source = 'threshold'", [pid])
    vois = vois[vois.id.isin(used)]
    by_cycle = {c: g.set_index("voi") for c, g in vois.groupby("cycle")}
    shared = set(by_cycle[1].index) & set(by_cycle[2].index)
    assert shared, "no lesion found again in cycle 2"
    for name in shared:  # the same lesion: centroids close in the patient's (moving) body
        a, b = (Volume.from_row(by_cycle[c].loc[name].to_dict()) for c in (1, 2))
        ca, cb = (v.index_to_world(np.argwhere(v.array > 0).mean(0)[::-1]) for v in (a, b))
        assert np.linalg.norm(ca - cb) < 40.0, name
    assert {r["voi"] for r in second.organ_rows} >= shared

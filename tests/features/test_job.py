"""The feature job on a small synthetic patient with two cycles of dosimetry."""

from __future__ import annotations

import numpy as np
import pytest

from theralake.dosimetry.patient import load_config, run_cycle
from theralake.dosimetry.voi_activity import mask_on
from theralake.features.job import run_features, wide
from theralake.features.radiomics import load_feature_set
from theralake.ingest.pseudonym import Pseudonymizer
from theralake.ingest.runner import IngestOptions, ingest
from theralake.lake import Lake, Volume
from theralake.synth.cohort import generate_cohort
from theralake.synth.config import SynthConfig

PSEUDO = Pseudonymizer(key="features-test-key")
FAST_SET = """
imageType: {Original: {}}
featureClass: {shape: , firstorder: , glcm: }
setting: {binWidth: 25, resampledPixelSpacing: [8, 8, 8], interpolator: sitkBSpline,
          label: 1, minimumROIDimensions: 2, minimumROISize: 8, correctMask: true}
"""


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    generate_cohort(SynthConfig(patients=1, cycles=2, seed=3, small=True), root / "syn",
                    progress=False)
    lake = Lake(root / "lake")
    ingest(root / "syn", lake, IngestOptions(show_progress=False), PSEUDO)
    pid = PSEUDO.patient_id("SYN0001")
    config = load_config(method="ldm", registration="rigid", voxel_model="mono",
                         partial_volume={"method": "none"})
    for cycle in (1, 2):
        run_cycle(lake, pid, cycle, config)
    ct = lake.read("images", "patient_id = ? AND kind = 'ct' AND cycle = 1", [pid]
                   ).sort_values("time_h").iloc[0]
    outside = Volume.from_row(ct.to_dict()).like(np.zeros(
        Volume.from_row(ct.to_dict()).array.shape, np.uint8))
    outside.array[0, 0, 0] = 1  # a one-voxel VOI in the corner: outside every SPECT FOV?
    lake.append("vois", [{"id": "tiny", "patient_id": pid, "voi": "lesion_900",
                          "image_id": ct.id, "cycle": 1, "time_h": ct.time_h, "source": "seg",
                          "frame_of_reference_key": ct.frame_of_reference_key,
                          **outside.geometry_columns()}])
    (root / "fast.yaml").write_text(FAST_SET)
    counts = run_features(lake, set_name=str(root / "fast.yaml"), workers=1, progress=False)
    return lake, pid, counts, root


def test_every_image_kind_gets_its_features(lake):
    the_lake, pid, counts, _ = lake
    f = the_lake.read("features")
    assert counts["features"] == len(f) > 0
    kinds = set(zip(f.image_kind, f.feature_class, strict=True))
    for need in [("ct", "glcm"), ("ct", "shape"), ("pet", "firstorder"), ("pet", "uptake"),
                 ("spect", "uptake"), ("spect", "firstorder"), ("dose", "dvh"),
                 ("dose", "glcm"), ("bed", "dvh"), ("bed", "firstorder"),
                 ("pet", "burden"), ("dose", "delta:dvh"), ("spect", "reldelta:uptake")]:
        assert need in kinds, need
    radiomic = f[f.feature_class == "firstorder"]
    assert (radiomic.engine.str.startswith("pyradiomics")).all()
    assert radiomic.settings_hash.nunique() >= 4  # the bin width differs per image kind
    # stored under IBSI names and definitions (excess kurtosis)
    assert radiomic.feature.str.contains("intensity-based statistics: \\(excess\\) kurtosis"
                                         ).any()


def test_values_agree_with_the_dosimetry_and_the_images(lake):
    the_lake, pid, _, _ = lake
    f = the_lake.read("features", "patient_id = ?", [pid])
    od = the_lake.read("organ_dosimetry", "cycle = 1").set_index("voi")
    not_spect = f[f.image_kind != "spect"]  # (SPECT has a value per time point)
    get = not_spect.set_index(["cycle", "image_kind", "voi", "feature_class", "feature"]
                              ).value.sort_index()
    assert get.index.is_unique
    # the DVH mean is the dose map's own mean in the VOI the dosimetry used, which
    # organ_dosimetry keeps beside its (mass-weighted) organ dose: within 4 % on the 8 mm
    # test grid, where a kidney's edge voxels mix it with its fat capsule
    for voi in ("liver", "kidney_left"):
        assert get[1, "dose", voi, "dvh", "dmean_gy"] == pytest.approx(
            od.loc[voi, "map_mean_dose_gy"], rel=1e-6)
        assert get[1, "dose", voi, "dvh", "dmean_gy"] == pytest.approx(
            od.loc[voi, "absorbed_dose_gy"], rel=0.04)
        assert get[1, "bed", voi, "dvh", "dmean_gy"] >= get[1, "dose", voi, "dvh", "dmean_gy"]
    assert "no partial-volume correction" in the_lake.read("dvhs").basis.iloc[0]
    # SPECT activity in a VOI at the reference time point equals the dosimetry's TAC point
    tac = the_lake.read("tacs", "cycle = 1 AND voi = 'liver'").sort_values("time_h").iloc[0]
    spect = f[(f.image_id == tac.image_id) & (f.voi == "liver") & (f.feature == "activity_mbq")]
    assert spect.value.iloc[0] == pytest.approx(tac.activity_mbq, rel=1e-6)
    # SUVmax from the image and its SUV factor
    pet_row = the_lake.read("images", "kind = 'pet'").iloc[0]
    pet = Volume.from_row(pet_row.to_dict())
    liver = the_lake.read("vois", "voi = 'liver' AND frame_of_reference_key = ?",
                          [pet_row.frame_of_reference_key]).iloc[0]
    mask = mask_on(Volume.from_row(liver.to_dict()), pet)
    want = float((pet.array[mask] * pet_row.suvbw_per_bqml).max())
    assert get[pet_row.cycle, "pet", "liver", "uptake", "suvmax"] == pytest.approx(want, rel=1e-6)
    # deltas are the differences between the cycles' values
    d1 = get[1, "dose", "liver", "dvh", "d50_gy"]
    d2 = get[2, "dose", "liver", "dvh", "d50_gy"]
    assert get[2, "dose", "liver", "delta:dvh", "d50_gy"] == pytest.approx(d2 - d1)
    # the cumulative DVH is stored and starts at the whole volume
    dvhs = the_lake.read("dvhs", "voi = 'liver' AND quantity = 'dose' AND cycle = 1")
    assert dvhs.volume_fraction.iloc[0][0] == pytest.approx(1.0)


def test_bad_vois_are_recorded_not_faked(lake):
    the_lake, pid, counts, root = lake
    errors = the_lake.read("feature_errors")
    assert counts["errors"] == len(errors) > 0
    tiny = errors[errors.voi == "lesion_900"]
    assert not tiny.empty and tiny.reason.str.len().min() > 10
    assert the_lake.read("features", "voi = 'lesion_900' AND feature_class = 'dvh'").empty
    before = the_lake.counts()
    run_features(the_lake, set_name=str(root / "fast.yaml"), progress=False)  # idempotent
    assert the_lake.counts() == before


def test_wide_view_has_one_row_per_patient_cycle(lake):
    the_lake, pid, _, _ = lake
    table = wide(the_lake)
    assert list(table.index) == [(pid, 1), (pid, 2)]
    assert "dose/kidney_left/dvh/dmean_gy" in table.columns


def test_unknown_feature_set_is_refused():
    with pytest.raises(ValueError, match="unknown feature set"):
        load_feature_set("no-such-set")
    assert load_feature_set("default").hash_for("ct") != load_feature_set("default").hash_for(
        "dose")


def test_spect_uptake_at_each_time_point_in_percent_of_decayed_activity(lake):
    the_lake, pid, _, _ = lake
    f = the_lake.read("features", "image_kind = 'spect' AND voi = 'liver' AND cycle = 1 "
                      "AND feature IN ('percent_ia', 'activity_mbq')")
    table = f.pivot_table(index="time_h", columns="feature", values="value")
    assert len(table) == len(the_lake.read("images", "kind = 'spect' AND cycle = 1"))
    admin = the_lake.read("administrations", "cycle = 1 AND purpose = 'therapy'").iloc[0]
    decayed = admin.activity_mbq * np.exp(-np.log(2) / (6.647 * 24) * table.index.values)
    assert np.allclose(table.percent_ia / 100 * decayed, table.activity_mbq, rtol=1e-3)

"""Typed Arrow schemas of the lake's core tables (names and columns are a public interface)."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

_f64 = pa.float64()
_str = pa.string()
_i64 = pa.int64()

#: Columns every voxel-array row carries (images, VOI masks, dose maps): geometry and voxels.
VOXEL_COLUMNS: list[pa.Field] = [
    pa.field("shape", pa.list_(pa.int32()), nullable=False),  # (x, y, z) voxel counts
    pa.field("spacing_mm", pa.list_(_f64), nullable=False),  # (x, y, z)
    pa.field("origin_mm", pa.list_(_f64), nullable=False),  # world position of voxel (0,0,0)
    pa.field("direction", pa.list_(_f64), nullable=False),  # 3x3 row-major, columns = axes
    pa.field("dtype", _str, nullable=False),
    pa.field("compression", _str, nullable=False),
    pa.field("voxels", pa.large_binary(), nullable=False),  # compressed C-order (z, y, x) array
]

#: Lineage columns on every derived row.
LINEAGE_COLUMNS: list[pa.Field] = [
    pa.field("input_ids", pa.list_(_str)),
    pa.field("params_hash", _str),
    pa.field("theralake_version", _str),
    pa.field("created_utc", pa.timestamp("us", tz="UTC")),
]


def _schema(*fields: pa.Field | list[pa.Field]) -> pa.Schema:
    flat: list[pa.Field] = []
    for f in fields:
        flat.extend(f if isinstance(f, list) else [f])
    return pa.schema(flat)


SCHEMAS: dict[str, pa.Schema] = {
    "patients": _schema(
        pa.field("patient_id", _str, nullable=False),
        pa.field("id", _str, nullable=False),
        pa.field("sex", _str),
        pa.field("age_y", _f64),
        pa.field("weight_kg", _f64),
        pa.field("height_m", _f64),
        # first administration time moved by a secret keyed per-patient shift (not a real date)
        pa.field("reference_time_shifted", pa.timestamp("s")),
        LINEAGE_COLUMNS,
    ),
    "administrations": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64, nullable=False),
        pa.field("purpose", _str, nullable=False),  # therapy | diagnostic
        pa.field("nuclide", _str, nullable=False),
        pa.field("pharmaceutical", _str),
        pa.field("activity_mbq", _f64),
        pa.field("administration_h", _f64, nullable=False),  # hours after the first administration
        pa.field("source", _str),
        LINEAGE_COLUMNS,
    ),
    "images": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("modality", _str, nullable=False),  # CT, PT, NM, RTDOSE, ...
        pa.field("kind", _str, nullable=False),  # ct, pet, spect, dose
        pa.field("units", _str, nullable=False),  # HU, BQML, GY, ...
        pa.field("cycle", _i64),
        pa.field("time_h", _f64),  # hours after the administration of its cycle
        pa.field("acquisition_h", _f64),  # hours after the patient's first administration
        pa.field("nuclide", _str),
        pa.field("suvbw_per_bqml", _f64),  # SUVbw = voxel [Bq/mL] x this
        pa.field("calibration_cps_per_mbq", _f64),
        pa.field("acquisition_duration_s", _f64),
        pa.field("series_key", _str),  # keyed hash of SeriesInstanceUID
        pa.field("frame_of_reference_key", _str),  # keyed hash of FrameOfReferenceUID
        pa.field("description", _str),
        pa.field("resolution_fwhm_mm", _f64),  # SPECT system resolution (camera calibration)
        VOXEL_COLUMNS,
        LINEAGE_COLUMNS,
    ),
    "vois": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("voi", _str, nullable=False),
        pa.field("image_id", _str),  # the image whose grid the mask lies on (None if absent)
        pa.field("cycle", _i64),
        pa.field("time_h", _f64),
        pa.field("source", _str, nullable=False),  # rtstruct, seg, nifti, threshold, ai, ...
        pa.field("source_name", _str),  # the name in the source before mapping
        pa.field("volume_ml", _f64),
        pa.field("voxel_count", _i64),
        pa.field("frame_of_reference_key", _str),
        VOXEL_COLUMNS,
        LINEAGE_COLUMNS,
    ),
    "tacs": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64, nullable=False),
        pa.field("voi", _str, nullable=False),
        pa.field("time_h", _f64, nullable=False),
        pa.field("activity_mbq", _f64, nullable=False),
        pa.field("activity_sigma_mbq", _f64),
        pa.field("image_id", _str),
        LINEAGE_COLUMNS,
    ),
    "organ_dosimetry": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64, nullable=False),
        pa.field("voi", _str, nullable=False),
        pa.field("method", _str, nullable=False),
        pa.field("mass_g", _f64),
        pa.field("tia_mbq_h", _f64),
        pa.field("tia_sigma_mbq_h", _f64),
        pa.field("absorbed_dose_gy", _f64),
        pa.field("max_dose_gy", _f64),
        pa.field("dose_per_activity_gy_per_gbq", _f64),
        pa.field("bed_gy", _f64),
        pa.field("eqd2_gy", _f64),
        # standard uncertainties: the TIA's relative one carried into dose, BED and EQD2
        pa.field("absorbed_dose_sigma_gy", _f64),
        pa.field("bed_sigma_gy", _f64),
        pa.field("eqd2_sigma_gy", _f64),
        # sums over this cycle and the earlier cycles in the lake (same VOI and method)
        pa.field("cumulative_bed_gy", _f64),
        pa.field("cumulative_eqd2_gy", _f64),
        pa.field("fit_model", _str),
        pa.field("fit_parameters", _str),  # JSON
        # how the TIA was obtained: fit, hanscheid2018 or madsen2018, from which time points
        pa.field("tia_method", _str),
        pa.field("time_points_h", pa.list_(_f64)),
        pa.field("partial_volume", _str),  # none | gtm | recovery: the TAC's correction
        # which dose absorbed_dose_gy is, and the dose map's own mean in the VOI (the DVH's)
        pa.field("dose_basis", _str),
        pa.field("map_mean_dose_gy", _f64),
        # the kinetics behind BED: BED = D + G D^2 / (alpha/beta)
        pa.field("effective_half_life_h", _f64),
        pa.field("lea_catcheside_g", _f64),
        pa.field("alpha_beta_gy", _f64),
        pa.field("repair_half_time_h", _f64),
        pa.field("voi_id", _str),  # the vois row measured (tumor_total: none, its lesions')
        pa.field("quality", _str),  # pass | warn | fail: the worst finding of this VOI
        LINEAGE_COLUMNS,
    ),
    "dose_maps": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64, nullable=False),
        pa.field("quantity", _str, nullable=False),  # tia, dose, bed
        pa.field("method", _str, nullable=False),
        pa.field("units", _str, nullable=False),
        pa.field("frame_of_reference_key", _str),
        pa.field("reference_ct_id", _str),  # the CT whose VOIs and grid the map goes with
        VOXEL_COLUMNS,
        LINEAGE_COLUMNS,
    ),
    "registrations": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64),
        pa.field("fixed_image_id", _str, nullable=False),
        pa.field("moving_image_id", _str, nullable=False),
        pa.field("time_h", _f64),
        pa.field("ncc_before", _f64),
        pa.field("ncc_after", _f64),
        pa.field("mi_before", _f64),
        pa.field("mi_after", _f64),
        pa.field("jacobian_min", _f64),
        pa.field("jacobian_max", _f64),
        pa.field("activity_error", _f64),  # relative change of total activity by resampling
        pa.field("failed", pa.bool_()),
        pa.field("reasons", _str),
        # mean Dice of the organs contoured on both CTs, before and after registration
        pa.field("organ_dice_before", _f64),
        pa.field("organ_dice_after", _f64),
        LINEAGE_COLUMNS,
    ),
    "configs": _schema(  # the settings each run used, by hash (runs point to them)
        pa.field("id", _str, nullable=False),  # the settings' hash
        pa.field("kind", _str, nullable=False),  # dosimetry, features, training ...
        pa.field("yaml", _str, nullable=False),
        LINEAGE_COLUMNS,
    ),
    "features": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64),
        pa.field("voi", _str, nullable=False),
        pa.field("image_kind", _str, nullable=False),
        pa.field("feature_class", _str, nullable=False),
        pa.field("feature", _str, nullable=False),
        pa.field("value", _f64),
        pa.field("engine", _str),
        pa.field("settings_hash", _str),
        pa.field("image_id", _str),  # the image (or dose map) the value was computed on
        pa.field("time_h", _f64),  # its time after the cycle's administration
        LINEAGE_COLUMNS,
    ),
    "dvhs": _schema(  # cumulative DVH per VOI of a dose or BED map
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64),
        pa.field("voi", _str, nullable=False),
        pa.field("quantity", _str, nullable=False),  # dose | bed
        pa.field("image_id", _str),  # the dose map
        pa.field("volume_ml", _f64),
        pa.field("dose_gy", pa.list_(_f64)),  # increasing, 0 .. Dmax
        pa.field("volume_fraction", pa.list_(_f64)),  # receiving at least dose_gy
        pa.field("basis", _str),  # which map: e.g. "vsv dose map, no partial-volume correction"
        LINEAGE_COLUMNS,
    ),
    "feature_errors": _schema(  # a VOI/feature skipped by the feature job, with the reason
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64),
        pa.field("voi", _str, nullable=False),
        pa.field("image_kind", _str, nullable=False),
        pa.field("feature_class", _str, nullable=False),
        pa.field("image_id", _str),
        pa.field("reason", _str, nullable=False),
        LINEAGE_COLUMNS,
    ),
    "quality": _schema(  # findings of a step per patient-cycle and VOI (nothing silent)
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64),
        pa.field("step", _str, nullable=False),  # dosimetry, ...
        pa.field("voi", _str),  # None: the whole patient-cycle
        pa.field("check", _str, nullable=False),  # e.g. organ_missing, fit_implausible
        pa.field("status", _str, nullable=False),  # pass | warn | fail
        pa.field("message", _str, nullable=False),
        pa.field("value", _f64),  # the number the check looked at, when there is one
        pa.field("image_id", _str),
        LINEAGE_COLUMNS,
    ),
    "clinical": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("variable", _str, nullable=False),
        pa.field("value_num", _f64),
        pa.field("value_text", _str),
        LINEAGE_COLUMNS,
    ),
    "outcomes": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("endpoint", _str, nullable=False),
        pa.field("event", pa.bool_()),
        pa.field("time_d", _f64),  # days after the first administration
        pa.field("value", _f64),  # binary or graded endpoints
        LINEAGE_COLUMNS,
    ),
    "predictions": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64),
        pa.field("task", _str, nullable=False),
        pa.field("target", _str),
        pa.field("value", _f64),
        pa.field("lower", _f64),
        pa.field("upper", _f64),
        pa.field("model_uri", _str),
        LINEAGE_COLUMNS,
    ),
    "recommendations": _schema(
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("cycle", _i64, nullable=False),
        pa.field("activity_mbq", _f64),
        pa.field("limiting_organ", _str),
        pa.field("explanation", _str),
        pa.field("details", _str),  # JSON
        LINEAGE_COLUMNS,
    ),
    "run_log": _schema(  # one row per task outcome of `theralake run` (a log: never rewritten)
        pa.field("id", _str, nullable=False),
        pa.field("run_id", _str, nullable=False),
        pa.field("step", _str, nullable=False),  # ingest, dosimetry, features, train
        pa.field("task", _str, nullable=False),  # e.g. dosimetry/P1234/2
        pa.field("patient_id", _str),
        pa.field("cycle", _i64),
        pa.field("inputs_hash", _str),  # content hash of the task's inputs and settings
        pa.field("status", _str, nullable=False),  # done, failed, skipped, retried
        pa.field("error", _str),
        pa.field("attempt", _i64),
        pa.field("start_utc", pa.timestamp("us", tz="UTC")),
        pa.field("end_utc", pa.timestamp("us", tz="UTC")),
        pa.field("seconds", _f64),
        pa.field("engine", _str),
        pa.field("worker", _str),  # host:pid that ran it
        pa.field("lake_snapshot", _i64),  # the lake snapshot the task read at its start
        LINEAGE_COLUMNS,
    ),
}

_ACQUISITION_COLUMNS = [
    pa.field("camera_key", _str),  # keyed hash of DeviceSerialNumber (a device identifier)
    pa.field("nuclide", _str),
    pa.field("photopeak_kev", _f64),
    pa.field("collimator", _str),  # a code of PyTomography's collimator table (collim.col)
]
_RECON_COLUMNS = [
    pa.field("method", _str),  # osem | bsrem
    pa.field("iterations", _i64),
    pa.field("subsets", _i64),
    pa.field("beta", _f64),  # BSREM's relative-difference prior weight
]

#: the SPECT tables: acquisitions, reconstructions and the camera's calibration
SCHEMAS.update({
    "projection_windows": _schema(  # one energy window of an NM tomographic acquisition
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("image_id", _str, nullable=False),  # its views: images row of kind projections
        pa.field("series_key", _str),
        pa.field("cycle", _i64),
        pa.field("time_h", _f64),
        pa.field("window_index", _i64, nullable=False),
        pa.field("window_name", _str),
        pa.field("lower_kev", _f64, nullable=False),
        pa.field("upper_kev", _f64, nullable=False),
        pa.field("role", _str, nullable=False),  # photopeak, scatter_lower, scatter_upper, other
        pa.field("peak_kev", _f64),  # the gamma line of its photopeak
        pa.field("angles_deg", pa.list_(_f64)),  # per view, PyTomography's detector angles
        pa.field("radii_mm", pa.list_(_f64)),  # per view, detector distance
        pa.field("bins", _i64),
        pa.field("rows", _i64),
        pa.field("pixel_mm", _f64),
        pa.field("grid_origin_mm", pa.list_(_f64)),  # LPS of the reconstruction voxel (0,0,0)
        pa.field("frame_duration_s", _f64),
        pa.field("collimator_name", _str),  # as the DICOM header names it
        pa.field("manufacturer", _str),
        pa.field("camera_key", _str),
        LINEAGE_COLUMNS,
    ),
    "reconstructions": _schema(  # how a SPECT of the images table was reconstructed
        pa.field("id", _str, nullable=False),
        pa.field("patient_id", _str, nullable=False),
        pa.field("image_id", _str, nullable=False),
        pa.field("cycle", _i64),
        pa.field("time_h", _f64),
        _ACQUISITION_COLUMNS,
        _RECON_COLUMNS,
        pa.field("views", _i64),  # reconstructed from
        pa.field("acquired_views", _i64),  # of them acquired (the others synthesised)
        # the network applied to the views first (registered name and version), and its task:
        # views (synthesised between the acquired ones) or denoise
        pa.field("projection_network", _str),
        pa.field("projection_network_task", _str),
        pa.field("attenuation_correction", _str),  # ct | none
        pa.field("scatter_correction", _str),  # tew | dew | none
        pa.field("cps_per_mbq", _f64),
        pa.field("calibration_id", _str),  # the camera_calibrations row (None: given by hand)
        pa.field("ct_id", _str),
        LINEAGE_COLUMNS,
    ),
    "camera_calibrations": _schema(  # a camera's sensitivity from a uniform phantom
        pa.field("id", _str, nullable=False),
        _ACQUISITION_COLUMNS,
        pa.field("cps_per_mbq", _f64, nullable=False),  # planar sensitivity, one view
        pa.field("phantom", _str),
        pa.field("activity_mbq", _f64),  # at the acquisition start
        _RECON_COLUMNS,
        pa.field("source", _str),  # the phantom description's file name
        LINEAGE_COLUMNS,
    ),
    "recovery_curves": _schema(  # sphere recovery of a camera and reconstruction
        pa.field("id", _str, nullable=False),
        _ACQUISITION_COLUMNS,
        _RECON_COLUMNS,
        pa.field("calibration_id", _str),
        pa.field("diameter_mm", _f64, nullable=False),
        pa.field("volume_ml", _f64, nullable=False),
        pa.field("recovery", _f64, nullable=False),  # mean in the true sphere / true
        # the Gaussian resolution whose sphere recoveries fit the curve (background included)
        pa.field("resolution_fwhm_mm", _f64),
        pa.field("sphere_bq_per_ml", _f64),
        pa.field("background_bq_per_ml", _f64),
        pa.field("source", _str),
        LINEAGE_COLUMNS,
    ),
})

CORE_TABLES: tuple[str, ...] = tuple(SCHEMAS)

"""The VOIs of a patient-cycle on its reference CT, from wherever the contours are.

For each organ of the settings, in order of preference:

1. a contour on the reference CT;
2. a contour on another time point's CT of the cycle (the nearest in time), carried with the
   registration the cycle computes anyway;
3. a contour on another cycle's CT or on the pre-therapy PET/CT (nearest in time, the PET/CT
   last), carried by registering that CT onto the reference (organs only: lesions change);
4. the segmenter's mask, when the caller passed one.

An organ found nowhere is a warning. Lesions: imported contours of the cycle (1 and 2), else
the reference SPECT thresholded outside the organs, each lesion named after the previous
cycle's lesion it matches. In cycle 1 the organs the pre-therapy PET/CT lacks are carried onto
it (for its features). Every carried or computed mask becomes a ``vois`` row, every
registration a ``registrations`` row, every drop or doubt a :class:`Finding`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from theralake.dosimetry import registration
from theralake.dosimetry.auto_vois import LesionFinder, Segmenter
from theralake.dosimetry.cycle_io import Contour, CtImage, CycleInputs, TimePoint
from theralake.dosimetry.lesions import match_lesions, segment_lesions
from theralake.dosimetry.quality import Finding
from theralake.dosimetry.voi_activity import to_grid
from theralake.dosimetry.voi_transfer import organ_dice
from theralake.lake import Volume
from theralake.lake.rows import registration_row, voi_row
from theralake.lake.views import reference_index

__all__ = ["Registrar", "Voi", "VoiSet", "assemble_vois", "carried_row", "choose_reference",
           "lesion_names", "registration_pair_row", "segment_ct"]

Registrar = Callable[[Volume, Volume], registration.RegistrationResult]
CARRIED = "transferred"


@dataclass
class Voi:
    """A VOI on the reference CT: its mask, its ``vois`` row and where it came from."""

    name: str
    mask: Volume
    row: dict
    origin: str

    @property
    def id(self) -> str:
        return self.row["id"]


@dataclass
class VoiSet:
    """What :func:`assemble_vois` found, and the rows and findings it made."""

    vois: dict[str, Voi] = field(default_factory=dict)
    new_rows: list[dict] = field(default_factory=list)
    registration_rows: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def wanted(name: str, settings: dict) -> bool:
    """A contour the settings measure: a listed organ, or a lesion when imported lesions are
    used."""
    return name in settings["organs"] or (name.startswith("lesion_")
                                          and settings["lesions"]["from_imported_vois"])


def choose_reference(points: list[TimePoint], settings: dict) -> int:
    """The reference time point: ``auto`` (the most contoured VOIs on its CT, the earliest on
    a tie), ``first``, ``last`` or an index."""
    rule = settings["reference_time_point"]
    if rule == "first":
        return 0
    if rule == "last":
        return len(points) - 1
    if isinstance(rule, int):
        if not -len(points) <= rule < len(points):
            raise ValueError(f"reference_time_point {rule} but the cycle has {len(points)} "
                             "time points")
        return rule % len(points)
    return reference_index([sum(wanted(n, settings) for n in p.ct.contours) for p in points])


def assemble_vois(inputs: CycleInputs, ref_index: int,
                  moved: dict[int, registration.RegistrationResult], settings: dict,
                  registrar: Registrar, segmenter: Segmenter | None, params_hash: str,
                  lesion_finder: LesionFinder | None = None) -> VoiSet:
    """The VOIs on the reference CT (see the module's docstring for the order)."""
    points = inputs.time_points
    ref = points[ref_index]
    out = VoiSet()
    _unused_names(inputs, settings, out)
    for name, contour in sorted(ref.ct.contours.items()):
        if wanted(name, settings):
            _take(out, name, contour.mask, contour.row, "contour on the reference CT")
    _from_time_points(inputs, ref_index, moved, settings, params_hash, out)
    _from_other_cts(inputs, ref.ct, settings, registrar, params_hash, out)
    _segmented(inputs, ref.ct, settings, segmenter, out)
    missing = [o for o in settings["organs"] if o not in out.vois]
    for organ in missing:
        out.findings.append(Finding(
            "organ_missing", "warn", "no contour on any CT of the patient" + (
                "" if segmenter is None else f" and {segmenter.name} does not find it") + (
                "; no segmenter (segmentation.backend)" if segmenter is None else ""), organ))
    if not any(n.startswith("lesion_") for n in out.vois) and settings["lesions"]["segment"]:
        _segment_lesions(inputs, ref, registrar, settings, params_hash, out, missing,
                         lesion_finder)
    return out


def _take(out: VoiSet, name: str, mask: Volume, row: dict, origin: str,
          new: bool = False) -> None:
    if not mask.array.any():
        out.findings.append(Finding("contour_unused", "warn", f"{origin} is empty", name,
                                    image_id=row.get("image_id")))
        return
    out.vois[name] = Voi(name, mask, row, origin)
    if new:
        out.new_rows.append(row)


def _unused_names(inputs: CycleInputs, settings: dict, out: VoiSet) -> None:
    names = {n for p in inputs.time_points for n in p.ct.contours}
    for name in sorted(n for n in names if not wanted(n, settings)):
        out.findings.append(Finding("contour_unused", "pass", "imported contour not used: not "
                                    "among the settings' organs", name))


def carried_row(inputs: CycleInputs, name: str, moved: np.ndarray, target: CtImage,
                 source: Contour, source_ct: CtImage, params_hash: str) -> dict:
    vol = target.volume.like(moved.astype(np.uint8))
    return voi_row(inputs.patient_id, name, vol, target.row, CARRIED,
                   f"{source.row['source']} {name} of CT {source_ct.id}",
                   input_ids=[source.id, source_ct.id, target.id], params_hash=params_hash,
                   key=(source.id,))


def _from_time_points(inputs: CycleInputs, ref_index: int,
                      moved: dict[int, registration.RegistrationResult], settings: dict,
                      params_hash: str, out: VoiSet) -> None:
    """Contours of the cycle's other time points, nearest in time first."""
    points = inputs.time_points
    ref = points[ref_index]
    order = sorted((i for i in range(len(points)) if i != ref_index),
                   key=lambda i: (abs(points[i].time_h - ref.time_h), i))
    need_lesions = not any(n.startswith("lesion_") for n in out.vois)
    for i in order:
        tp, reg = points[i], moved[i]
        names = [n for n in sorted(tp.ct.contours) if wanted(n, settings) and n not in out.vois
                 and (need_lesions or not n.startswith("lesion_"))]
        for name in names:
            contour = tp.ct.contours[name]
            mask = registration.resample_mask(contour.mask, reg.transform, ref.ct.volume)
            origin = f"carried from the {tp.time_h:g} h CT"
            _flag_registration(out, reg, name, origin)
            _take(out, name, ref.ct.volume.like(mask.astype(np.uint8)),
                  carried_row(inputs, name, mask, ref.ct, contour, tp.ct, params_hash),
                  origin, new=True)
        if any(n.startswith("lesion_") for n in names):
            need_lesions = False


def _flag_registration(out: VoiSet, reg: registration.RegistrationResult, name: str,
                       origin: str) -> None:
    if reg.failed:
        out.findings.append(Finding("carried_by_failed_registration", "warn",
                                    f"{origin} by a registration that failed its quality check "
                                    f"({'; '.join(reg.reasons)})", name))


def _from_other_cts(inputs: CycleInputs, ref_ct: CtImage, settings: dict,
                    registrar: Registrar, params_hash: str, out: VoiSet) -> None:
    """Organs from other cycles' CTs (nearest in time) and then the pre-therapy PET/CT."""
    at = ref_ct.row.get("acquisition_h")

    def distance(ct: CtImage) -> tuple:
        here = ct.row.get("acquisition_h")
        gap = abs(here - at) if here is not None and at is not None else np.inf
        return (ct.pet_ct, gap, ct.id)

    for source in sorted(inputs.other_cts, key=distance):
        names = [n for n in sorted(source.contours) if n in settings["organs"]
                 and n not in out.vois]
        if not names:
            continue
        reg = registrar(ref_ct.volume, source.volume)
        out.registration_rows.append(registration_pair_row(inputs, ref_ct, source, reg,
                                                           params_hash))
        what = "the pre-therapy PET/CT" if source.pet_ct else \
            f"cycle {source.row.get('cycle')}'s {source.row.get('time_h', 0):g} h CT"
        for name in names:
            contour = source.contours[name]
            mask = registration.resample_mask(contour.mask, reg.transform, ref_ct.volume)
            origin = f"carried from {what}"
            _flag_registration(out, reg, name, origin)
            _take(out, name, ref_ct.volume.like(mask.astype(np.uint8)),
                  carried_row(inputs, name, mask, ref_ct, contour, source, params_hash),
                  origin, new=True)


def registration_pair_row(inputs: CycleInputs, fixed: CtImage, moving: CtImage,
                  reg: registration.RegistrationResult, params_hash: str) -> dict:
    dice = tuple(organ_dice(_organ_masks(fixed), _organ_masks(moving), t, fixed.volume,
                            moving.volume) for t in (None, reg.transform))
    return registration_row(inputs.patient_id, inputs.cycle, fixed.row, moving.row, reg,
                            params_hash, dice=dice)


def _organ_masks(ct: CtImage) -> dict[str, Volume]:
    return {n: c.mask for n, c in ct.contours.items()
            if not n.startswith("lesion_") and n != "body"}


def _segmented(inputs: CycleInputs, ref_ct: CtImage, settings: dict,
               segmenter: Segmenter | None, out: VoiSet) -> None:
    missing = [o for o in settings["organs"] if o not in out.vois and o != "body"]
    if segmenter is None or not missing:
        return
    for name, (mask, row, new) in segment_ct(inputs, ref_ct, missing, segmenter).items():
        _take(out, name, ref_ct.volume.like(mask.astype(np.uint8)), row,
              f"segmented by {segmenter.name}", new=new)


def segment_ct(inputs: CycleInputs, ct: CtImage, organs: list[str], segmenter: Segmenter
               ) -> dict[str, tuple[np.ndarray, dict, bool]]:
    """The segmenter's masks of ``organs`` on a CT: (mask, vois row, whether the row is new);
    masks stored by an earlier run of the same segmenter are reused."""
    cached = inputs.cached.get(ct.id, {})
    found: dict[str, tuple[np.ndarray, dict, bool]] = {}
    for organ in organs:
        hit = cached.get(f"{segmenter.name}\x1f{organ}")
        if hit is not None:
            found[organ] = (hit.mask.array > 0, hit.row, False)
    todo = [o for o in organs if o not in found and o in segmenter.organs]
    for organ, mask in segmenter.segment(ct.volume, todo).items():
        vol = ct.volume.like(mask.astype(np.uint8))
        row = voi_row(inputs.patient_id, organ, vol, ct.row, segmenter.source, segmenter.name,
                      input_ids=[ct.id], key=(segmenter.name,))
        found[organ] = (mask, row, True)
    return found


def lesion_names(found: list, earlier: dict[str, np.ndarray], spacing_mm) -> list[str]:  # noqa: ANN001
    """A lesion matching one of the previous cycle's (centroids within 20 mm, Hungarian) keeps
    its name; the others get new numbers after the highest one used."""
    names: list[str | None] = [None] * len(found)
    previous = list(earlier)
    for i, j in match_lesions([les.mask for les in found], [earlier[n] for n in previous],
                              spacing_mm, max_distance_mm=20.0):
        names[i] = previous[j]
    used = [int(n.split("_")[1]) for n in previous if n.split("_")[1].isdigit()]
    number = max(used, default=0)
    for i, name in enumerate(names):
        if name is None:
            number += 1
            names[i] = f"lesion_{number:03d}"
    return names  # type: ignore[return-value]


def _segment_lesions(inputs: CycleInputs, ref: TimePoint, registrar: Registrar,
                     settings: dict, params_hash: str, out: VoiSet, missing_organs: list[str],
                     finder: LesionFinder | None) -> None:
    """Lesions on the reference SPECT: thresholded outside every organ VOI, or found by the
    lesion network (with the PET's lesion probability registered onto the reference CT)."""
    ct = ref.ct.volume
    opts = settings["lesions"]
    if opts["method"] == "network":
        if finder is None:
            raise ValueError("lesions.method network needs the lesion segmenter (the caller "
                             "loads it from lesions.model)")
        found = finder.find(ct, ref.spect, _pet_prior(inputs, ref, registrar, finder,
                                                       params_hash, out))
        source, name, inputs_ids = "lesion_network", finder.name, [ref.spect_row["id"]] + (
            [inputs.pet.row["id"]] if inputs.pet is not None else [])
    else:
        spect_on_ct = to_grid(ref.spect, ct).clip(0, None)
        exclude = np.zeros(ct.array.shape, bool)
        for voi_name, voi in out.vois.items():
            if voi_name != "body":
                exclude |= voi.mask.array.astype(bool)
        found = segment_lesions(spect_on_ct, ct.voxel_volume_ml, method=opts["method"],
                                fraction=opts["fraction"], exclude=exclude,
                                min_volume_ml=opts["min_volume_ml"])
        source, name = "threshold", f"{opts['method']} {opts['fraction']}"
        inputs_ids = [ref.spect_row["id"]]
    if found and missing_organs:
        out.findings.append(Finding(
            "lesions_without_organs", "warn", f"{len(found)} lesion(s) segmented while "
            f"{', '.join(missing_organs)} had no contour: a lesion may be one of them"))
    earlier = _previous_lesions_here(inputs, ref.ct, registrar, params_hash, out) \
        if found else {}
    how = "found by the lesion network" if source == "lesion_network" else "thresholded"
    for les, voi_name in zip(found, lesion_names(found, earlier, ct.spacing_mm), strict=True):
        vol = ct.like(les.mask.astype(np.uint8))
        row = voi_row(inputs.patient_id, voi_name, vol, ref.ct.row, source, name,
                      input_ids=inputs_ids, params_hash=params_hash)
        _take(out, voi_name, vol, row, f"{how} on the {ref.time_h:g} h SPECT", new=True)


def _pet_prior(inputs: CycleInputs, ref: TimePoint, registrar: Registrar,
               finder: LesionFinder, params_hash: str, out: VoiSet) -> Volume | None:
    """The PET network's lesion probability registered onto the reference CT; None (a
    warning) without a pre-therapy PET/CT."""
    if inputs.pet is None:
        out.findings.append(Finding(
            "lesion_prior_missing", "warn", "no pre-therapy PET/CT: the lesion network "
            "segmented the SPECT/CT without the PET's lesion probability"))
        return None
    probability = finder.pet_probability(inputs.pet.ct.volume, inputs.pet.volume)
    reg = registrar(ref.ct.volume, inputs.pet.ct.volume)
    out.registration_rows.append(registration_pair_row(inputs, ref.ct, inputs.pet.ct, reg,
                                                       params_hash))
    return registration.resample_map(probability, reg.transform, ref.ct.volume)


def _previous_lesions_here(inputs: CycleInputs, ref_ct: CtImage, registrar: Registrar,
                           params_hash: str, out: VoiSet) -> dict[str, np.ndarray]:
    """The previous cycle's thresholded lesions carried onto the reference CT (to name the
    new ones after them)."""
    if inputs.previous_lesions is None:
        return {}
    source, lesions = inputs.previous_lesions
    reg = registrar(ref_ct.volume, source.volume)
    out.registration_rows.append(registration_pair_row(inputs, ref_ct, source, reg, params_hash))
    return {n: registration.resample_mask(c.mask, reg.transform, ref_ct.volume)
            for n, c in lesions.items()}


def pet_ct_vois(inputs: CycleInputs, ref_ct: CtImage, vois: dict[str, Voi], settings: dict,
                registrar: Registrar, params_hash: str) -> VoiSet:
    """Cycle 1: the organs each pre-therapy PET/CT lacks, carried from the reference CT."""
    out = VoiSet()
    if inputs.cycle != 1:
        return out
    for pet in (c for c in inputs.other_cts if c.pet_ct):
        names = [n for n, v in vois.items() if n in settings["organs"] and n != "body"
                 and n not in pet.contours]
        if not names:
            continue
        reg = registrar(pet.volume, ref_ct.volume)
        out.registration_rows.append(registration_pair_row(inputs, pet, ref_ct, reg, params_hash))
        for name in names:
            voi = vois[name]
            mask = registration.resample_mask(voi.mask, reg.transform, pet.volume)
            if mask.any():
                source = Contour(voi.row, voi.mask)
                out.new_rows.append(carried_row(inputs, name, mask, pet, source, ref_ct,
                                                 params_hash))
    return out

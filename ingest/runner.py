"""One ingest run: scan a folder, read everything, place it on each patient's timeline,
and append it to the lake (each object atomically; a failing object is skipped and reported)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from pydicom.dataset import Dataset

from theralake.ingest import contours, segmentations
from theralake.ingest.calibration import CalibrationTable
from theralake.ingest.dicom_files import Series, group_series, scan
from theralake.ingest.dicom_images import (
    IMAGE_MODALITIES,
    PendingImage,
    read_series,
    require_finite,
)
from theralake.ingest.errors import IngestError
from theralake.ingest.nifti import PendingLabels, read_nifti
from theralake.ingest.phantoms import PHANTOM_FILE
from theralake.ingest.pseudonym import Pseudonymizer, check_lake_key, lake_pseudonymizer
from theralake.ingest.radiopharm import Administration
from theralake.ingest.records import administration_row, image_row, projection_window_row, voi_row
from theralake.ingest.scrub import Scrubber, identifying_values, scrub_text
from theralake.ingest.tables import (
    MAPPING_NAMES,
    Mapping,
    read_administrations,
    read_calibration,
    read_clinical,
    read_identifiers,
    read_outcomes,
)
from theralake.ingest.timeline import PatientTimeline, assign_cycles, merge_administrations
from theralake.ingest.voi_names import voi_name
from theralake.lake import Lake, LakeError, Volume, stable_hash

log = logging.getLogger(__name__)


@dataclass
class IngestOptions:
    calibration_cps_per_mbq: float | None = None
    calibration_file: Path | None = None
    mapping_file: Path | None = None
    show_progress: bool = True
    #: keep table rows (clinical, outcomes, administrations) only of the patients whose images
    #: are in the batch: a cohort ingested one patient folder at a time, with its tables
    imaged_patients_only: bool = False
    #: create the pseudonymisation key file when it is missing (a new lake's first ingest)
    new_key: bool = False


@dataclass
class IngestReport:
    """What an ingest added and what it skipped, with the reasons."""

    added: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: list[IngestError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    objects: int = 0

    def summary(self) -> str:
        added = ", ".join(f"{n} {t}" for t, n in sorted(self.added.items()) if n) or "nothing new"
        lines = [f"ingested {self.objects} objects: added {added}; skipped {len(self.skipped)}"]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  skipped {e.source}: {e.problem}" for e in self.skipped]
        return "\n".join(lines)


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
            self.bar.__enter__()
        return self

    def task(self, description: str, total: int | None) -> int | None:
        return self.bar.add_task(description, total=total) if self.enabled else None

    def advance(self, task: int | None, total: int | None = None) -> None:
        if self.enabled and task is not None:
            if total is not None:
                self.bar.update(task, total=total)
            self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def ingest(path: str | Path | Sequence[str | Path], lake: Lake,
           options: IngestOptions | None = None,
           pseudonymizer: Pseudonymizer | None = None) -> IngestReport:
    """Ingest files and folders (recursively) into the lake, as one batch."""
    options = options or IngestOptions()
    roots = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such file or folder")
    if options.calibration_file and not Path(options.calibration_file).is_file():
        raise FileNotFoundError(f"{options.calibration_file}: no such calibration file")
    if pseudonymizer is None:
        pseudo = lake_pseudonymizer(lake, options.new_key)
    else:
        pseudo = pseudonymizer
        check_lake_key(lake, pseudo)
    report = IngestReport(warnings=list(pseudo.warnings))
    run = _Run(lake, pseudo, report)
    with _Progress(options.show_progress) as progress:
        task = progress.task("scanning files", None)
        headers, errors, others = scan(roots, lambda total: progress.advance(task, total))
        report.skipped += errors
        headers, phantoms = _without_phantoms(headers)
        if phantoms:
            report.warnings.append(
                f"{len(phantoms)} phantom acquisition folder(s) (a phantom.json beside the "
                f"files) left out, for `theralake calibrate`: {', '.join(phantoms)}")
        mapping = run.load_mapping(options, others)
        calibration = CalibrationTable(default_cps_per_mbq=options.calibration_cps_per_mbq)
        if options.calibration_file:
            calibration.merge(read_calibration(options.calibration_file, {}))
        run.read_tables(others, mapping, calibration)
        series = group_series(headers)
        report.objects = len(series) + sum(1 for p in others if p.name.endswith((".nii", ".gz")))
        task = progress.task("reading series", len(series))
        structures: list[Series] = []
        for s in series:
            if s.modality in IMAGE_MODALITIES:
                run.attempt(lambda s=s: [run.add_image(im) for im in read_series(s, calibration)],
                            s.label)
            elif s.modality in ("RTSTRUCT", "SEG"):
                structures.append(s)
            else:
                report.skipped.append(IngestError(s.label, f"modality {s.modality or '?'} is "
                                      "not an image, structure set or segmentation"))
            progress.advance(task)
        for p in others:
            if p.name.endswith((".nii", ".nii.gz")):
                run.attempt(lambda p=p: run.add_nifti(read_nifti(p)), str(p))
        if options.imaged_patients_only:
            run.keep_patients({obj.raw_patient_id for obj in run.images + run.label_maps})
        # reading (above) runs in parallel; placing on timelines and writing is one ingest at
        # a time, so that two batches holding the same patient agree on its timeline. The
        # writes are one commit: a killed ingest leaves nothing, its re-run completes.
        with lake.exclusive("ingest"), lake.batch() as added:
            run.build_timelines()
            task = progress.task("writing images", len(run.images))
            for im in run.images:
                run.attempt(lambda im=im: run.write_image(im), im.source_label)
                progress.advance(task)
            task = progress.task("writing VOIs", len(structures) + len(run.label_maps))
            for s in structures:
                run.attempt(lambda s=s: run.write_structures(s, mapping), s.label)
                progress.advance(task)
            for lm in run.label_maps:
                run.attempt(lambda lm=lm: run.write_label_map(lm, mapping), lm.source_label)
                progress.advance(task)
            run.write_tables()
    report.added.update(added)
    return report


class _Run:
    """State of one ingest run (kept out of the public API)."""

    def __init__(self, lake: Lake, pseudo: Pseudonymizer, report: IngestReport):
        self.lake, self.pseudo, self.report = lake, pseudo, report
        self.images: list[PendingImage] = []
        self.label_maps: list[PendingLabels] = []
        self.admins: list[Administration] = []
        self.clinical: list[dict] = []
        self.outcomes: list[dict] = []
        self.timelines: dict[str, PatientTimeline | None] = {}
        self.written: list[tuple[PendingImage, dict]] = []
        self.scrubber = Scrubber()

    def attempt(self, fn, label: str) -> None:  # noqa: ANN001
        """Run one step; its failure skips that input only (unexpected errors included)."""
        try:
            fn()
        except IngestError as exc:
            log.warning("skipped %s", exc)
            self.report.skipped.append(exc)
        except (LakeError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad input must not stop the batch
            log.exception("unexpected error on %s", label)
            self.report.skipped.append(IngestError(label, f"unexpected error: {exc!r}"))

    def append(self, table: str, rows: list[dict]) -> None:
        self.report.added[table] += self.lake.append(table, rows)

    # -- reading ---------------------------------------------------------------------------
    def load_mapping(self, options: IngestOptions, others: list[Path]) -> Mapping:
        path = options.mapping_file or next((p for p in others if p.name in MAPPING_NAMES), None)
        if path is None:
            return Mapping()
        try:
            mapping = Mapping.load(Path(path))
        except IngestError as exc:
            self.report.skipped.append(exc)
            return Mapping()
        self.report.skipped += mapping.problems
        return mapping

    def read_tables(self, others: list[Path], mapping: Mapping,
                    calibration: CalibrationTable) -> None:
        problems = self.report.skipped
        readers = {
            "clinical": lambda p, s: self.clinical.extend(read_clinical(
                p, s, problems, self.report.warnings)),
            "outcomes": lambda p, s: self.outcomes.extend(read_outcomes(p, s, problems)),
            "administrations": lambda p, s: self.admins.extend(
                read_administrations(p, s, problems)),
            "calibration": lambda p, s: calibration.merge(read_calibration(p, s))}
        for p in others:
            if p.suffix.lower() != ".csv":
                continue
            kind = mapping.kind_of(p)
            if kind is None:
                log.info("%s: not a table theralake knows (name it clinical*, outcomes*, "
                         "administrations* or calibration*, or map it)", p)
                continue
            self.attempt(lambda p=p, kind=kind: readers[kind](p, mapping.spec(kind)), str(p))
            if kind != "calibration":
                self.attempt(lambda p=p, kind=kind: self._identifiers_of(p, mapping.spec(kind)),
                             str(p))

    def _identifiers_of(self, csv: Path, spec: dict) -> None:
        for raw, values in read_identifiers(csv, spec).items():
            self.scrubber.add(raw, values)

    def keep_patients(self, raw_ids: set[str]) -> None:
        """Drop the table rows of every other patient."""
        self.admins = [a for a in self.admins if a.raw_patient_id in raw_ids]
        self.clinical = [r for r in self.clinical if r["raw_patient_id"] in raw_ids]
        self.outcomes = [r for r in self.outcomes if r["raw_patient_id"] in raw_ids]

    def add_image(self, im: PendingImage) -> None:
        require_finite(im.volume.array, im.source_label)
        self.scrubber.add(im.raw_patient_id, im.identifiers)
        self.images.append(im)

    def add_nifti(self, obj: PendingImage | PendingLabels) -> None:
        if isinstance(obj, PendingLabels):
            self.label_maps.append(obj)
        else:
            self.add_image(obj)

    # -- timelines ---------------------------------------------------------------------------
    def build_timelines(self) -> None:
        admins = list(self.admins) + [im.administration for im in self.images if im.administration]
        by_patient: dict[str, list[Administration]] = defaultdict(list)
        for a in admins:
            by_patient[a.raw_patient_id].append(a)
        raws = set(by_patient) | {im.raw_patient_id for im in self.images} | \
            {r["raw_patient_id"] for r in self.clinical + self.outcomes}
        # the lake is read once and written once per table: per-patient reads and appends
        # made a cohort's ingest quadratic in its size
        self._stored = {t: {pid: g for pid, g in self.lake.read(t).groupby("patient_id")}
                        for t in ("patients", "administrations")}
        self._new: dict[str, list[dict]] = {"patients": [], "administrations": []}
        for raw in sorted(raws):
            try:
                self.timelines[raw] = self._timeline(raw, by_patient.get(raw, []))
            except IngestError as exc:
                self.report.skipped.append(exc)
                self.timelines[raw] = None
        for table, rows in self._new.items():
            self.append(table, rows)

    def _stored_rows(self, table: str, pid: str) -> pd.DataFrame:
        return self._stored[table].get(pid, pd.DataFrame())

    def _timeline(self, raw: str, admins: list[Administration]) -> PatientTimeline | None:
        pid = self.pseudo.patient_id(raw)
        stored = self._stored_rows("patients", pid)
        stored = stored[stored.reference_time_shifted.notna()] if not stored.empty else stored
        reference = None
        if not stored.empty:
            reference = self.pseudo.unshifted(raw, stored["reference_time_shifted"].iloc[0]
                                              .to_pydatetime())
            for _, r in self._stored_rows("administrations", pid).iterrows():
                admins.append(Administration(raw, r["nuclide"], reference + timedelta(
                    hours=float(r["administration_h"])), r["activity_mbq"], r["pharmaceutical"],
                    r["purpose"], "lake", int(r["cycle"])))
        if not admins:
            self._write_patient(raw, None)
            return None
        for a in admins:
            a.pharmaceutical = self.scrubber.scrub(a.pharmaceutical, raw)
        merged = merge_administrations(admins)
        try:
            assign_cycles(merged)
        except ValueError as exc:
            raise IngestError(f"patient {pid}", str(exc)) from exc
        first = merged[0].time
        if reference is not None and first < reference:
            raise IngestError(f"patient {pid}", "an administration earlier than the first one "
                              "already in the lake would renumber its cycles; ingest all of "
                              "this patient's data into a new lake")
        # whole seconds: the stored (shifted) reference has a resolution of one second
        timeline = PatientTimeline(reference or first.replace(microsecond=0), merged)
        self._write_patient(raw, timeline)
        self._new["administrations"] += [administration_row(a, timeline, self.pseudo)
                                         for a in merged
                                         if a.activity_mbq is not None or a.source != "lake"]
        return timeline

    def _write_patient(self, raw: str, timeline: PatientTimeline | None) -> None:
        pid = self.pseudo.patient_id(raw)
        demo = next((im for im in self.images if im.raw_patient_id == raw and im.weight_kg), None)
        shifted = self.pseudo.shifted(raw, timeline.reference) if timeline else None
        row = {"patient_id": pid, "sex": demo.sex if demo else None,
               "age_y": demo.age_y if demo else None,
               "weight_kg": demo.weight_kg if demo else None,
               "height_m": demo.height_m if demo else None,
               "reference_time_shifted": shifted}
        existing = self._stored_rows("patients", pid)
        if not existing.empty and (shifted is None or
                                   existing["reference_time_shifted"].notna().any()):
            return  # the patient is known; the first record stays
        row["id"] = stable_hash("patient", pid, shifted)
        self._new["patients"].append(row)

    # -- writing ----------------------------------------------------------------------------
    def write_image(self, im: PendingImage) -> None:
        timeline = self.timelines.get(im.raw_patient_id)
        im.description = self.scrubber.scrub(im.description, im.raw_patient_id)
        row = image_row(im, timeline, self.pseudo)
        if row["cycle"] is None and im.modality == "RTDOSE":
            ref = self._reference_for(set(), im.frame_of_reference_uid)
            if ref is not None:
                row["cycle"] = ref[1].get("cycle")
        self.append("images", [row])
        if im.projection is not None:
            self.append("projection_windows", [projection_window_row(im, row, self.pseudo)])
        self.written.append((im, row))

    def _reference_for(self, series_uids: set[str], frame_uid: str | None
                       ) -> tuple[Volume, dict, str | None] | None:
        """The image (volume, row, its frame of reference) a structure set was drawn on."""
        def rank(im_row: tuple[PendingImage, dict]) -> int:
            return {"CT": 0, "MR": 1, "PT": 2, "NM": 3}.get(im_row[0].modality, 9)
        by_series = [w for w in self.written if w[0].series_uid in series_uids]
        by_frame = [w for w in self.written if frame_uid and
                    w[0].frame_of_reference_uid == frame_uid and w[0].modality != "RTDOSE"]
        for cands in (by_series, by_frame):
            if cands:
                im, row = min(cands, key=rank)
                return im.volume, row, im.frame_of_reference_uid
        keys = [self.pseudo.uid(u) for u in series_uids]
        fkey = self.pseudo.uid(frame_uid)
        for where, params in (("series_key IN (SELECT unnest(?))", [keys]),
                              ("frame_of_reference_key = ? AND modality <> 'RTDOSE'", [fkey])):
            if where.startswith("series") and not keys or where.startswith("frame") and not fkey:
                continue
            df = self.lake.read("images", where, params)
            if not df.empty:
                df = df.assign(_r=df["modality"].map({"CT": 0, "MR": 1, "PT": 2}).fillna(9))
                r = df.sort_values("_r").iloc[0].to_dict()
                return Volume.from_row(r), r, "lake:" + str(r["frame_of_reference_key"])
        return None

    def write_structures(self, s: Series, mapping: Mapping) -> None:
        # an RTSTRUCT's header is the whole object; a SEG's frames and pixels are read now
        ds, frames = (s.first, []) if s.modality == "RTSTRUCT" else \
            segmentations.read_seg(s.paths[0], s.first, s.label)
        raw = str(ds.get("PatientID", ""))
        self.scrubber.add(raw, identifying_values(ds))
        idents = sorted(self.scrubber.identifiers(raw))
        if s.modality == "RTSTRUCT":
            frame = contours.referenced_frame_of_reference(ds)
            series_uids = set(contours.referenced_series_uids(ds))
        else:
            frame = str(ds.get("FrameOfReferenceUID") or "") or None
            series_uids = set(segmentations.referenced_series_uids(ds))
        ref = self._reference_for(series_uids, frame)
        if ref is not None and frame and ref[2] and not ref[2].startswith("lake:") \
                and ref[2] != frame:
            raise IngestError(s.label, f"{s.modality} frame of reference differs from that of "
                                       "the image series it references")
        if ref is not None and frame and ref[2] and ref[2].startswith("lake:") \
                and ref[2][5:] != str(self.pseudo.uid(frame)):
            raise IngestError(s.label, f"{s.modality} frame of reference differs from that of "
                                       "the image series it references")
        rows = []
        if s.modality == "RTSTRUCT":
            if ref is None:
                raise IngestError(s.label, "RTSTRUCT references a frame of reference with no "
                                           "image in this batch or the lake; ingest the image "
                                           "series its contours were drawn on")
            grid, ref_row, _ = ref
            for roi in contours.rtstruct_rois(ds, s.label):
                if roi.frame_of_reference_uid and frame and roi.frame_of_reference_uid != frame:
                    raise IngestError(s.label, f"ROI {roi.name!r} references another frame of "
                                               "reference than its structure set")
                mask = contours.rasterise(roi.polygons, grid, f"{s.label} ROI {roi.name!r}")
                voi, source_name = _names(roi.name, idents, mapping)
                rows.append(voi_row(raw, voi, source_name, mask,
                                    grid, "rtstruct", self.pseudo, ref_row, frame))
            if not rows:
                raise IngestError(s.label, "RTSTRUCT without closed planar contours")
        else:
            if ref is None:
                log.warning("%s: referenced image not found; VOIs kept on the SEG's own grid",
                            s.label)
                grid, ref_row = segmentations.own_grid(frames, s.label), None
            else:
                grid, ref_row, _ = ref
            for number, name in segmentations.segment_labels(ds).items():
                mask = segmentations.paint(frames, number, grid, s.label)
                voi, source_name = _names(name, idents, mapping)
                rows.append(voi_row(raw, voi, source_name, mask, grid,
                                    "seg", self.pseudo, ref_row, frame))
        self.append("vois", _unique_names(rows, s.label))

    def write_label_map(self, lm: PendingLabels, mapping: Mapping) -> None:
        ref = self._reference_for(set(), lm.frame_of_reference_uid)
        grid, ref_row = (lm.volume, None) if ref is None else (ref[0], ref[1])
        if ref is not None and not grid.same_grid(lm.volume):
            raise IngestError(lm.source_label, "label map is not on the grid of the image it "
                                               "belongs to (FrameOf)")
        rows = []
        for value, name in lm.labels.items():
            voi = voi_name(name, mapping.voi_names)
            # a voxel has one label, so a label map's body holds only what no other label
            # claims: the body VOI is the union of every label (the whole body)
            mask = np.asarray(lm.volume.array) > 0 if voi == "body" else \
                np.asarray(lm.volume.array) == value
            if not mask.any():  # declared but absent (e.g. a lesion that disappeared)
                log.warning("%s: label %d (%s) has no voxels; not ingested", lm.source_label,
                            value, name)
                continue
            rows.append(voi_row(lm.raw_patient_id, voi,
                                self.scrubber.scrub(name, lm.raw_patient_id), mask, grid,
                                "nifti", self.pseudo, ref_row, lm.frame_of_reference_uid))
        self.append("vois", _unique_names(rows, lm.source_label))

    def write_tables(self) -> None:
        for table, rows in (("clinical", self.clinical), ("outcomes", self.outcomes)):
            out = []
            for r in rows:
                raw = r["raw_patient_id"]
                rec = {k: v for k, v in r.items() if k != "raw_patient_id"}
                if table == "clinical" and not self._clinical_value(rec, raw):
                    continue
                rec["patient_id"] = self.pseudo.patient_id(raw)
                rec["id"] = stable_hash(table, sorted(rec.items(), key=lambda kv: kv[0]))
                out.append(rec)
            self.append(table, out)

    def _clinical_value(self, rec: dict, raw: str) -> bool:
        """Scrub a clinical text value; turn a date into hours after the patient's reference
        (``<variable>_h``), like every other time. False: the value cannot be stored."""
        rec["value_text"] = self.scrubber.scrub(rec["value_text"], raw)
        when = rec.pop("value_date", None)
        if when is None:
            return True
        timeline = self.timelines.get(raw)
        if timeline is None:
            self.report.warnings.append(
                f"clinical {rec['variable']} of patient {self.pseudo.patient_id(raw)}: a date, "
                "and the patient has no administration to count hours from; not ingested")
            return False
        rec["variable"] = f"{rec['variable']}_h"
        rec["value_num"] = round(timeline.hours(when), 1)
        return True


def _without_phantoms(headers: list[tuple[Path, Dataset]]
                      ) -> tuple[list[tuple[Path, Dataset]], list[str]]:
    """The files not in a phantom's folder (one with a ``phantom.json``), and those folders."""
    phantom = {p.parent for p, _ in headers if (p.parent / PHANTOM_FILE).is_file()}
    return [(p, ds) for p, ds in headers if p.parent not in phantom], sorted(map(str, phantom))


def _names(name: str, idents: list[str], mapping: Mapping) -> tuple[str, str | None]:
    """(lake VOI name, source name kept) of a structure: identifying text removed."""
    clean = scrub_text(name, idents)
    if name in mapping.voi_names:
        return voi_name(name, mapping.voi_names), clean
    return voi_name(clean or name, mapping.voi_names), clean


def _unique_names(rows: list[dict], label: str) -> list[dict]:
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["voi"] in seen:
            log.warning("%s: VOI name %s appears twice; the first is kept", label, r["voi"])
            continue
        seen.add(r["voi"])
        out.append(r)
    return out

"""VOIs as a DICOM Segmentation (highdicom) on an exported CT series, for review in 3D Slicer,
OHIF or any SEG viewer: one binary segment per VOI, coded with SNOMED CT, and the algorithm
that made it (an imported contour is manual; an AI, carried or thresholded VOI automatic,
named).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from theralake import __version__

__all__ = ["ALGORITHMS", "segment_description", "write_seg"]

#: VOI name (without side) -> SNOMED CT property type
ORGAN_CODES: dict[str, Code] = {
    "liver": codes.SCT.Liver, "spleen": codes.SCT.Spleen, "kidney": codes.SCT.Kidney,
    "parotid_gland": codes.SCT.ParotidGland,
    "submandibular_gland": codes.SCT.SubmandibularGland,
    "lacrimal_gland": codes.SCT.LacrimalGland,
    "urinary_bladder": Code("89837001", "SCT", "Urinary bladder"),
    "red_marrow": codes.SCT.BoneMarrow, "body": codes.SCT.EntireBody,
}
#: a VOI row's ``source`` -> (algorithm type, algorithm name and family)
ALGORITHMS: dict[str, tuple[str, tuple[str, Code] | None]] = {
    "rtstruct": ("MANUAL", None), "seg": ("MANUAL", None), "nifti": ("MANUAL", None),
    "ai": ("AUTOMATIC", ("theralake organ segmenter", codes.cid7162.ArtificialIntelligence)),
    "totalsegmentator": ("AUTOMATIC", ("TotalSegmentator",
                                       codes.cid7162.ArtificialIntelligence)),
    "threshold": ("AUTOMATIC", ("theralake adaptive SPECT threshold",
                                codes.cid7162.HistogramAnalysis)),
    "lesion_network": ("AUTOMATIC", ("theralake PET-to-SPECT lesion network",
                                     codes.cid7162.ArtificialIntelligence)),
    "transferred": ("AUTOMATIC", ("theralake contour carried by registration",
                                  codes.cid7162.DeformableModels)),
}


def segment_description(number: int, name: str, source: str | None
                        ) -> hd.seg.SegmentDescription:
    """A segment named after the VOI, coded with SNOMED CT (organs with their side; lesions
    as lesions; other names as tissue), with the algorithm that made it."""
    base, side = name, None
    for suffix, code in (("_left", codes.SCT.Left), ("_right", codes.SCT.Right)):
        if name.endswith(suffix):
            base, side = name[: -len(suffix)], code
    if name.startswith("lesion_") or name == "tumor_total":
        category, kind = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    elif base in ORGAN_CODES:
        category, kind = codes.SCT.AnatomicalStructure, ORGAN_CODES[base]
    else:
        category, kind = codes.SCT.Tissue, codes.SCT.Tissue
    algorithm_type, algorithm = ALGORITHMS.get(source or "", ("MANUAL", None))
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm[0], family=algorithm[1], version=__version__) if algorithm else None
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64], segmented_property_category=category,
        segmented_property_type=kind, algorithm_type=algorithm_type,
        algorithm_identification=identification, tracking_id=name[:64],
        tracking_uid=hd.UID())
    if side is not None:
        modifier = Dataset()
        modifier.CodeValue, modifier.CodingSchemeDesignator = side.value, side.scheme_designator
        modifier.CodeMeaning = side.meaning
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence \
            = [modifier]
    return description


def write_seg(ct_datasets: Sequence[Dataset], masks: Mapping[str, np.ndarray],
              sources: Mapping[str, str | None], out: Path, series_uid: str, sop_uid: str
              ) -> Path:
    """A binary DICOM SEG of ``masks`` (z, y, x on the CT's slices, in ``ct_datasets``'
    order), one segment per VOI.

    Raises:
        ValueError: no VOI, or a mask not on the CT's grid.
    """
    if not masks:
        raise ValueError("no VOI to write as a segmentation")
    shape = (len(ct_datasets), int(ct_datasets[0].Rows), int(ct_datasets[0].Columns))
    for name, mask in masks.items():
        if mask.shape != shape:
            raise ValueError(f"VOI {name}: mask shape {mask.shape} is not the CT's {shape}")
    names = list(masks)
    pixels = np.stack([np.asarray(masks[n], bool) for n in names], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=list(ct_datasets), pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(i, n, sources.get(n))
                              for i, n in enumerate(names, start=1)],
        series_instance_uid=series_uid, series_number=3, sop_instance_uid=sop_uid,
        instance_number=1, manufacturer="theralake", manufacturer_model_name="theralake",
        software_versions=__version__, device_serial_number="theralake",
        content_description="theralake VOIs", content_label="VOIS")
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out, enforce_file_format=True)
    return out

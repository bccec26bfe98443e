"""One synthetic CT session's SEG, written by our fast writer and by highdicom."""

from __future__ import annotations

from pathlib import Path

from theralake.synth.config import SynthConfig
from theralake.synth.dicom_writer import UidFactory, write_ct, write_seg, write_seg_highdicom
from theralake.synth.imaging import render_sessions
from theralake.synth.patient import simulate_patient


def write_both_segs(out: Path) -> tuple[Path, Path]:
    """The same organs as a SEG from :func:`write_seg` and one from highdicom, both
    referencing one CT series written under ``out``: (fast writer's, highdicom's)."""
    cfg = SynthConfig(patients=1, cycles=1, seed=9, small=True, time_points_h=(4,))
    pt = simulate_patient(cfg, 0)
    s = list(render_sessions(pt, cfg.seed, cfg.small))[1]
    uids = UidFactory(cfg.seed, pt.patient_id)
    ref = write_ct(pt, s, out, uids)
    write_seg(pt, s, ref, out, uids)
    write_seg_highdicom(pt, s, ref, out / "highdicom.dcm", uids)
    return out / s.tag / "SEG" / "SEG0001.dcm", out / "highdicom.dcm"

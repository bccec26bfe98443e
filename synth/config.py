"""Options of the synthetic cohort generator, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field

from theralake.synth.constants import THERAPY_NUCLIDES, get_nuclide

DEFAULT_TIME_POINTS_H: tuple[float, ...] = (4.0, 24.0, 48.0, 168.0)
#: where contours (SEG) can be written (the protocol matrix of the dosimetry tests)
CONTOURS = ("all", "first", "later", "cycle1", "pet", "none")


class SynthConfigError(ValueError):
    """Raised for invalid generator options."""


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Attributes:
        patients: number of patients (>= 1).
        cycles: therapy cycles per patient (>= 1).
        seed: master random seed; the output is a deterministic function of the config.
        small: coarse, fast grids (for tests).
        time_points_h: nominal SPECT/CT times after each administration, strictly increasing.
        missing_prob: probability that an imaging time point (other than the first) is missing.
        activity_gbq: nominal activity per cycle.
        nuclide: therapy nuclide (only Lu-177 is modelled).
        fmt: "dicom" or "nifti".
        cycle_interval_d: nominal days between cycles.
        contours: where the VOI contours (SEG) are written: ``all`` CTs, the ``first`` or
            the second (``later``) SPECT/CT of each cycle, the first of cycle 1 only
            (``cycle1``), the pre-therapy PET/CT only (``pet``), or ``none``.
        spect_grids: ``same`` grid for every SPECT, or ``varied`` (the second time point
            finer voxels, the last a limited axial field of view without the head and neck).
    """

    patients: int = 1
    cycles: int = 2
    seed: int = 0
    small: bool = False
    time_points_h: tuple[float, ...] = DEFAULT_TIME_POINTS_H
    missing_prob: float = 0.0
    activity_gbq: float = 7.4
    nuclide: str = "Lu-177"
    fmt: str = "dicom"
    cycle_interval_d: float = 42.0
    contours: str = "all"
    spect_grids: str = "same"
    projections: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.patients, int) or self.patients < 1:
            raise SynthConfigError(f"--patients must be a positive integer, got {self.patients}")
        if not isinstance(self.cycles, int) or self.cycles < 1:
            raise SynthConfigError(f"--cycles must be a positive integer, got {self.cycles}")
        if self.seed < 0:
            raise SynthConfigError(f"--seed must be >= 0, got {self.seed}")
        tps = tuple(float(t) for t in self.time_points_h)
        object.__setattr__(self, "time_points_h", tps)
        if len(tps) < 1:
            raise SynthConfigError("--time-points needs at least one time point")
        if any(t <= 0 for t in tps):
            raise SynthConfigError(f"--time-points must be positive hours, got {list(tps)}")
        if any(b <= a for a, b in zip(tps, tps[1:], strict=False)):
            raise SynthConfigError(
                f"--time-points must be strictly increasing, got {list(tps)}"
            )
        if tps[-1] > 24.0 * self.cycle_interval_d:
            raise SynthConfigError("the last time point falls after the next cycle")
        if not 0.0 <= self.missing_prob < 1.0:
            raise SynthConfigError(f"--missing-prob must be in [0, 1), got {self.missing_prob}")
        if not 0.0 < self.activity_gbq <= 30.0:
            raise SynthConfigError(
                f"--activity-gbq must be in (0, 30], got {self.activity_gbq}"
            )
        try:
            get_nuclide(self.nuclide)
        except ValueError as err:
            raise SynthConfigError(str(err)) from None
        if self.nuclide not in THERAPY_NUCLIDES:
            raise SynthConfigError(
                f"nuclide {self.nuclide!r} is not a modelled therapy nuclide "
                f"({', '.join(THERAPY_NUCLIDES)})"
            )
        if self.fmt not in ("dicom", "nifti"):
            raise SynthConfigError(f"--format must be 'dicom' or 'nifti', got {self.fmt!r}")
        if self.contours not in CONTOURS:
            raise SynthConfigError(f"--contours must be one of {', '.join(CONTOURS)}, got "
                                   f"{self.contours!r}")
        if self.projections and not 8 <= self.projections <= 360:
            raise SynthConfigError(f"--views must be 8 to 360, got {self.projections}")
        if self.projections and self.fmt != "dicom":
            raise SynthConfigError("--projections are written as DICOM (NIfTI has no "
                                   "projection format): use --format dicom")
        if self.spect_grids not in ("same", "varied"):
            raise SynthConfigError(f"--spect-grids must be 'same' or 'varied', got "
                                   f"{self.spect_grids!r}")


def parse_time_points(text: str) -> tuple[float, ...]:
    """Parse "4,24,48,168" into hours, with a clear error on bad input."""
    try:
        values = tuple(float(p) for p in text.replace(";", ",").split(",") if p.strip())
    except ValueError:
        raise SynthConfigError(
            f"--time-points must be comma-separated hours like '4,24,48,168', got {text!r}"
        ) from None
    if not values:
        raise SynthConfigError("--time-points needs at least one time point")
    return values

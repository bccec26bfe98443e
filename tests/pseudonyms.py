"""Pseudonymizers for tests that put two synthetic cohorts into one lake."""

from __future__ import annotations

from theralake.ingest.pseudonym import Pseudonymizer


class SeparateCohort(Pseudonymizer):
    """The lake's key (one lake, one key) with a second cohort's ids kept apart from the
    first's: every generator names its patients SYN0001, SYN0002 ..."""

    def __init__(self, key: str, cohort: str):
        super().__init__(key=key)
        self.cohort = cohort

    def patient_id(self, raw_id: str) -> str:
        return super().patient_id(f"{self.cohort}:{raw_id}")

"""The outcome model: a model that uses the absorbed doses beats one that does not."""

from __future__ import annotations

import pytest

from theralake.synth.validation import outcome_margin, truth_frame


@pytest.fixture(scope="module")
def frame():  # noqa: ANN201
    return truth_frame(800, seed=77, cycles=2, raster=False)


@pytest.mark.parametrize("endpoint", ["pfs", "os"])
def test_dose_improves_concordance(frame, endpoint: str) -> None:  # noqa: ANN001
    m = outcome_margin(frame, endpoint)
    assert m.c_without_dose > 0.6
    assert m.margin > 0.02


def test_plausible_rates(frame) -> None:  # noqa: ANN001
    assert 0.3 < frame.psa50.mean() < 0.7
    assert 100 < frame.pfs_uncensored_d.median() < 300
    assert frame.os_uncensored_d.median() > frame.pfs_uncensored_d.median()
    assert 0.05 < (frame.salivary_toxicity_grade >= 1).mean() < 0.8
    assert (frame.pfs_time_d <= frame.os_time_d).all()
    assert 0.0 < 1 - frame.os_event.mean() < 0.7  # some censoring

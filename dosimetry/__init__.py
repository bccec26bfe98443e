"""theralake.dosimetry."""

#: the version of the dosimetry's numbers: raise it whenever a change moves a number. It is
#: hashed with the settings into every row (:func:`settings.config_hash`), so rows computed
#: before are computed again rather than kept because their inputs and settings are unchanged,
#: and it keys the on-disk kernel cache. 2: photon interactions without coherent scattering as
#: absorption (2026-12-07).
MODEL_VERSION = 2

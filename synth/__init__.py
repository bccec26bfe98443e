"""theralake.synth: a synthetic theranostics cohort with known truth (digital twins).

Entry points: :func:`theralake.synth.patient.simulate_patient` (truth only),
:func:`theralake.synth.imaging.render_sessions` (images),
:func:`theralake.synth.cohort.generate_cohort` (files on disk) and the ``theralake synth``
command (:func:`theralake.synth.cli.register`). See synth/README.md.
"""

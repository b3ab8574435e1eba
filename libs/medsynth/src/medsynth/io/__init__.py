"""File formats: validation and canonicalisation of uploaded NIfTI scans (:mod:`medsynth.io.nifti`)."""

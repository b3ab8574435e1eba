"""File formats: validation and canonicalisation of uploaded NIfTI scans (:mod:`medsynth.io.nifti`);
a view's geometry and the voxel → world affine cohorts' files carry (:mod:`medsynth.io.geometry`)."""

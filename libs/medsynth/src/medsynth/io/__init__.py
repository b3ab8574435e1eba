"""File formats: validation and canonicalisation of uploaded NIfTI scans (:mod:`medsynth.io.nifti`);
a view's geometry and the voxel → world affine cohorts' files carry (:mod:`medsynth.io.geometry`);
nnU-Net and Decathlon raw datasets: dataset.json, case layout, 2D cases as nnU-Net reads them
(:mod:`medsynth.io.nnunet`)."""

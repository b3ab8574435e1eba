"""Studies: the seed papers' experiments as one request. A study names a view and a grid (generator
families, seeds, segmenters, arms); ``plan`` expands it into ordinary jobs (generators, cohorts,
segmentation runs, evaluations) keyed by a hash of everything that produces each; ``runner`` submits
them as their inputs finish, reusing any job an identical request already made, and is driven by the
api's background loop (a study survives worker, broker and api restarts: its state is in the store);
``results`` turns the finished jobs into per-arm statistics, tables and the study report."""

"""Jobs: records in the store (the source of truth), submission, the worker loop, the reconciler."""

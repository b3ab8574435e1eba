"""medsynth: synthetic medical imaging cohorts — ingestion, generators, sampling, evaluation."""

__version__ = "0.1.0"

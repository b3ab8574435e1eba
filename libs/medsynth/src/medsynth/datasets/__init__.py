"""Datasets: versioned manifests of ingested scans, ingestion, and training views split by patient."""

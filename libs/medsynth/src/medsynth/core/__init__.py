"""Bottom layer: settings, errors, logging and small utilities. Imports nothing else of medsynth."""

"""Generated protobuf code for protos/medsynth/v1 (``make protos``). Do not edit by hand."""

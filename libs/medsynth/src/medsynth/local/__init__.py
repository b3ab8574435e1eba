"""The one-machine stack and its command line: starting and stopping the local services, the
end-to-end demo, and the ingest client scripts use."""

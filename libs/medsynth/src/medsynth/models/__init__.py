"""Networks: generators (joint image + mask) and their configuration."""

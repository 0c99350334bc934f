"""Experiments: one module each, with a `Config` dataclass (including `run_dir`) and `run(config) -> summary`."""

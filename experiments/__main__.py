"""`python -m experiments <experiment> key=value ...` (the same as `make train EXP=... ARGS=...`).

Run from the repository root (the `experiments` package is not installed; the library is)."""

from __future__ import annotations

import sys

from experiments import _registry as registry
from jaxllm.config import ConfigError, apply_overrides
from jaxllm.train.run import default_run_dir


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("experiments: " + ", ".join(registry.experiment_names()))
        return 0
    if argv[0] == "--list":
        for name in registry.experiment_names():
            print(f"{name:28s} {registry.describe(name)}")
        return 0
    name, overrides = argv[0], argv[1:]
    try:
        module = registry.load(name)
        config = apply_overrides(module.Config(), overrides)
    except (KeyError, TypeError, ConfigError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if not getattr(config, "run_dir", ""):
        config = apply_overrides(config, [f"run_dir={default_run_dir(name)}"])
    print(f"experiment {name}: run_dir={config.run_dir}", flush=True)
    try:
        summary = module.run(config)
    except ConfigError as e:  # e.g. resuming a run_dir that holds a different config
        print(f"error: {e}", file=sys.stderr)
        return 2
    if summary:
        for k, v in summary.items():
            print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

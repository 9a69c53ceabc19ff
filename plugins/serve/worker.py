"""One `herd serve --workers N` worker process: `python -m modelherd.plugins.serve.worker`."""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="herd-serve-worker")
    parser.add_argument("settings")
    parser.add_argument("--config", default=None)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    from modelherd.errors import ConfigError
    from modelherd.kernel import Herd
    from modelherd.plugins.serve.server import run_worker
    from modelherd.plugins.serve.settings import ServeSettings

    settings = ServeSettings.model_validate_json(args.settings)
    try:
        herd = Herd(config_path=args.config, profile=args.profile)
        asyncio.run(run_worker(herd, settings, reuse_port=True))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``finescope`` command: run the pipeline or one of its flows from a YAML config.

Errors in the config or its inputs end the command with one line naming the field and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ERRORS = (ValueError, FileNotFoundError, PermissionError, ModuleNotFoundError)
DEFAULT_CONFIG = "configs/demo.yaml"
BUILTIN = Path(__file__).resolve().parent.parent  # where the built-in configs and seeds are


def _before_flow(args: argparse.Namespace, output: str) -> None:
    """Set-up once the checks have passed, before a flow runs: Prefect settings that must be set before Prefect is
    imported (quiet, results kept with the run), and a watchdog that stops this process's children (Prefect's
    temporary server) if it is killed."""
    from finescope import reaper

    args.working = True
    reaper.start()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "finescope_core")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # slow on a busy 2-core machine
    if "://" not in output:
        os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(Path(output).resolve() / ".prefect-results"))


def run(args: argparse.Namespace) -> None:
    from finescope_core.config import load_config, parse_overrides
    from finescope_core.preflight import check_run

    config = load_config(args.config, parse_overrides(args.set))
    check_run(config)
    _before_flow(args, config.output)
    from finescope.flows.pipeline import finescope

    result = finescope(config)
    print(f"Report: {result['report']['markdown']}")
    print(f"Manifest: {result['manifest']}")


def _flow_config(args: argparse.Namespace, options: dict):
    """The config file with the subcommand's options (those given) and --set overrides applied. Without --config:
    configs/demo.yaml in the working folder, else the built-in one, whose seeds file is then read from the install
    (so that a first try from any folder works)."""
    from finescope_core.config import load_config, parse_overrides

    given = {key: value for key, value in (options | {"output": args.out}).items() if value is not None}
    local = Path(DEFAULT_CONFIG)
    config = load_config(args.config or (local if local.is_file() else BUILTIN / DEFAULT_CONFIG),
                         given | parse_overrides(args.set))
    seeds = Path(config.select.seeds)
    if not args.config and not local.is_file() and not seeds.is_absolute() and not seeds.exists():
        config.select.seeds = str(BUILTIN / seeds)
    return config


def curate(args: argparse.Namespace) -> None:
    from finescope_core.preflight import check_run

    config = _flow_config(args, {"data.pool": args.pool, "select.seeds": args.seeds, "select.budget": args.budget})
    check_run(config, needs_eval=False, prunes=False)
    _before_flow(args, config.output)
    from finescope.flows.curate import curate as curate_flow

    refs = curate_flow(config)
    print(f"Curated: {refs['curated']['uri']}/curated.parquet ({refs['curated']['info']['n_docs']} documents)")


def prune(args: argparse.Namespace) -> None:
    from finescope_core.preflight import check_run

    config = _flow_config(args, {"model.name": args.model, "prune.ratio": args.ratio})
    if args.calibration:
        from finescope_core.stages import calibration_file

        calibration_file(args.calibration)
    check_run(config, needs_eval=False, needs_seeds=not args.calibration)
    _before_flow(args, config.output)
    from finescope.flows.prune import prune as prune_flow

    ref = prune_flow(config, args.calibration)
    info = ref["info"]
    print(f"Pruned: {ref['model_uri']} ({info['params_before']:,} -> {info['params_after']:,} parameters)")


def evaluate(args: argparse.Namespace) -> None:
    from finescope_core.preflight import check_run

    config = _flow_config(args, {"model.name": args.model})
    check_run(config, needs_seeds=False, prunes=False)
    _before_flow(args, config.output)
    from finescope.flows.evaluate import evaluate as evaluate_flow

    info = evaluate_flow(config)
    print(f"Report: {info['markdown']}")


def sweep(args: argparse.Namespace) -> None:
    from finescope_core.config import load_config, parse_overrides
    from finescope_core.preflight import check_run

    given = {"sweep.ratios": args.ratios, "sweep.keep": args.keep, "sweep.metric": args.metric}
    config = load_config(args.config, {k: v for k, v in given.items() if v is not None} | parse_overrides(args.set))
    check_run(config, sweeps=True)
    _before_flow(args, config.output)
    from finescope.flows.sweep import sweep as sweep_flow

    info = sweep_flow(config)
    print(f"Sweep: {info['markdown']}")
    print(f"Chosen: {info['chosen'] or 'none (no model keeps enough; lower --keep or the ratios)'}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="finescope", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser("run", help="run the whole pipeline from a YAML config")
    run_cmd.add_argument("config", help="YAML run config, e.g. configs/demo.yaml")
    run_cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    run_cmd.set_defaults(handler=run)
    swp = commands.add_parser("sweep", help="prune and recover at several ratios; pick the smallest model that keeps "
                              "enough of the base's domain score")
    swp.add_argument("config", help="YAML run config, e.g. configs/demo.yaml")
    swp.add_argument("--ratios", type=float, nargs="+", help="pruning ratios (default: the config's sweep.ratios)")
    swp.add_argument("--keep", type=float, help="share of the base's domain score to keep (default: sweep.keep)")
    swp.add_argument("--metric", choices=["bpb", "acc"], help="domain score the choice uses (default: sweep.metric)")
    swp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    swp.set_defaults(handler=sweep)
    cur = _flow_command(commands, "curate", "select domain documents from a pool (SAE-guided)", curate)
    cur.add_argument("--pool", help="URI of the pool's Parquet shards (default: the demo corpus)")
    cur.add_argument("--seeds", help="JSONL seed examples")
    cur.add_argument("--budget", type=int, help="documents to keep")
    pru = _flow_command(commands, "prune", "structured pruning calibrated on curated text", prune)
    pru.add_argument("--model", help="model name, local folder or hub id (default: the config's)")
    pru.add_argument("--calibration", help="Parquet file with a text column (default: run curate first)")
    pru.add_argument("--ratio", type=float, help="fraction of all parameters to remove")
    ev = _flow_command(commands, "evaluate", "score one model on the eval sets (bits per byte, accuracy, speed)",
                       evaluate)
    ev.add_argument("--model", help="model name, local folder or hub id (default: the config's)")
    return root


def _flow_command(commands, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    """A subcommand that runs one flow: --config for the other settings, --out, --set."""
    command = commands.add_parser(name, help=help_text)
    command.add_argument("--config", help=f"YAML config for the other settings (default: {DEFAULT_CONFIG} here, "
                         "else the built-in demo config)")
    command.add_argument("--out", help="output root URI")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    command.set_defaults(handler=handler)
    return command


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 2 bad input (one line, before any work), 1 a failure during the work (its traceback
    is in Prefect's log above)."""
    args = parser().parse_args(argv)
    args.working = False  # set once the checks have passed and the flow starts
    try:
        args.handler(args)
    except Exception as exc:
        if isinstance(exc, ERRORS) and not args.working:
            print(f"finescope: error: {exc}", file=sys.stderr)
            return 2
        print(f"finescope: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

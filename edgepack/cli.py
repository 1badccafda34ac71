"""Command line: parse, call the API, render. Exit codes: 0 ok, 1 validation failed,
2 usage/input error, 3 conversion failed."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console

from edgepack import __version__, api
from edgepack.errors import EdgepackError

err = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


class _Group(click.Group):
    """Turns every EdgepackError into one line and its exit code; no traceback
    unless --debug."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except EdgepackError as e:
            if os.environ.get("EDGEPACK_DEBUG"):
                raise
            err.print(f"[bold red]error:[/] {e}", markup=True, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except Exception as e:  # a bug of ours: still one line unless --debug
            if os.environ.get("EDGEPACK_DEBUG"):
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            err.print(f"internal error: {type(e).__name__}: {first} (rerun with --debug and "
                      "report it)", markup=False, soft_wrap=True)
            sys.exit(3)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="edgepack")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug: bool) -> None:
    """Convert, quantize and verify one trained model for edge targets."""
    if debug:
        os.environ["EDGEPACK_DEBUG"] = "1"
    else:
        # Converter chatter (deprecations, fp16 rounding notes) is not the user's
        # business; what matters reaches them as results and exit codes.
        warnings.filterwarnings("ignore")


def _progress(quiet: bool):
    if quiet:
        return None, None
    status = err.status("starting")
    status.start()

    def say(msg: str) -> None:
        status.update(msg)

    return say, status


@main.command()
@click.argument("model", required=False)
@click.option("--target", "targets", multiple=True, help="onnx | profile name | profile.yaml | all")
@click.option("--precision", "precisions", multiple=True,
              help="fp32 | fp16 | int8 | int8-dynamic | all (default: the profile's)")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]",
              help="Input shape for torch sources, e.g. input:1x3x224x224:float32")
@click.option("--output", "outputs", multiple=True, help="Output names (torch sources).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration .npz.")
@click.option("--eval", "eval_", type=click.Path(path_type=Path), help="Evaluation .npz.")
@click.option("--task", type=click.Choice(["classification", "regression"]))
@click.option("--tolerance", "tolerances", multiple=True, metavar="KEY=VALUE")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path))
@click.option("--seed", type=int)
@click.option("--allow-random-calibration", is_flag=True, default=None,
              help="Calibrate int8 on seeded random data (accuracy numbers will mislead).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("--quiet", is_flag=True)
def build(model, targets, precisions, inputs, outputs, calib, eval_, task, tolerances,
          config_file, out, seed, allow_random_calibration, as_json, quiet) -> None:
    """Convert MODEL for each target and precision, validate, and write bundles."""
    from edgepack.compare import parse_tolerance_option
    from edgepack.config import make_config
    from edgepack.report import print_build
    from edgepack.signature import parse_input_option

    cfg = make_config(
        model, config_file,
        targets=list(targets), precisions=list(precisions),
        inputs=[parse_input_option(i) for i in inputs], outputs=list(outputs) or None,
        calib=calib, eval=eval_, task=task,
        tolerances=dict(parse_tolerance_option(t) for t in tolerances),
        out=out, seed=seed, allow_random_calibration=allow_random_calibration,
    )
    say, status = _progress(quiet or as_json)
    try:
        summary = api.build(cfg, progress=say)
    finally:
        if status is not None:
            status.stop()
    data = summary.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        print_build(data, stdout)
        for b in summary.bundles:
            if b.status == "failed":
                err.print(f"[bold red]FAILED[/] {b.name}: {b.reason}", soft_wrap=True)
    sys.exit(summary.exit_code)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def validate(paths, as_json) -> None:
    """CI gate: verify hashes, re-run golden inputs on the host, apply tolerances."""
    checks = api.validate(list(paths))
    if as_json:
        click.echo(json.dumps([{"bundle": c.bundle.name, "status": c.status, "lines": c.lines}
                               for c in checks], indent=2))
    else:
        for c in checks:
            mark = {"passed": "ok", "deferred": "deferred", "failed": "FAILED"}[c.status]
            click.echo(f"{mark:8} {c.bundle.name}")
    for c in checks:
        for line in c.lines:
            if c.status == "failed":
                click.echo(line, err=True)
    sys.exit(1 if any(c.status == "failed" for c in checks) else 0)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runs", type=int)
@click.option("--warmup", type=int)
@click.option("--threads", type=int)
@click.option("--json", "json_path", type=click.Path(path_type=Path))
def bench(bundle, runs, warmup, threads, json_path) -> None:
    """Run the bundle's own harness (bench.py) on this machine."""
    sys.exit(api.bench(bundle, runs, warmup, threads, json_path))


@main.command()
@click.argument("target")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]")
def inspect(target, inputs) -> None:
    """Signature, parameters, size, ops and precision of a model or bundle."""
    from edgepack.signature import parse_input_option

    info = api.inspect(target, [parse_input_option(i) for i in inputs])
    click.echo(json.dumps(info, indent=2, sort_keys=True))


@main.command()
def targets() -> None:
    """The target profiles and what each supports."""
    from rich.table import Table

    from edgepack.profiles import builtin_profiles

    table = Table(title="edgepack targets")
    for col in ("profile", "aliases", "backend", "runtime", "precisions", "default"):
        table.add_column(col)
    for p in builtin_profiles().values():
        table.add_row(p.name, ", ".join(p.aliases), p.backend, p.runtime["name"],
                      ", ".join(p.precisions), p.default_precision)
    stdout.print(table)


@main.command()
def doctor() -> None:
    """Which backends and runtimes are usable here, and why not."""
    from edgepack.doctor import checks

    for name, ok, detail in checks():
        click.echo(f"{'ok' if ok else 'missing':8} {name:24} {detail}")


if __name__ == "__main__":
    main()

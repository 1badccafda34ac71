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
from rich.markup import escape

from edgepack import __version__, api
from edgepack.errors import EdgepackError, Status

err = Console(stderr=True, highlight=False)
# Piped output (CI logs) gets a fixed 120 columns instead of rich's 80.
stdout = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


class _Group(click.Group):
    """Turns every EdgepackError into one line and its exit code; no traceback
    unless --debug."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except EdgepackError as e:
            if os.environ.get("EDGEPACK_DEBUG"):
                raise
            # One line whatever the message holds (a user's file name, a quoted YAML key),
            # printed as text: brackets in it are not rich markup.
            text = " ".join(part.strip() for part in str(e).splitlines()) or type(e).__name__
            err.print(f"[bold red]error:[/] {escape(text)}", markup=True, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # click's own help/usage handling, with its own exit codes
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


def _listed(values: tuple[str, ...]) -> list[str]:
    """Repeated options and comma-separated lists alike: ``--target onnx,tflite``.
    An existing file is one value (a profile path may hold a comma)."""
    out: list[str] = []
    for value in values:
        parts = [value] if Path(value).is_file() else value.split(",")
        out += [p.strip() for p in parts if p.strip()]
    return out


@main.command()
@click.argument("model", required=False)
@click.option("--target", "targets", multiple=True,
              help="onnx | profile name | profile.yaml | all; repeat or comma-separate")
@click.option("--precision", "precisions", multiple=True,
              help="fp32 | fp16 | int8 | int8-dynamic | all | auto (the smallest, then "
                   "fastest, that passes); repeat or comma-separate; default: the profile's")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]",
              help="Input shape for torch sources, e.g. input:1x3x224x224:float32")
@click.option("--output", "outputs", multiple=True, help="Output names (torch sources).")
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration .npz.")
@click.option("--eval", "eval_", type=click.Path(path_type=Path), help="Evaluation .npz.")
@click.option("--task", "tasks", multiple=True, metavar="[OUTPUT=]TASK",
              help="What an output is, so validation measures the right thing: "
                   "classification | regression | embedding | sequence | ctc | detection | "
                   "segmentation. TASK alone: every output; OUTPUT=TASK: one (repeatable). "
                   "Default: inferred per output and recorded in the manifest.")
@click.option("--labels-for", metavar="OUTPUT",
              help="The output the evaluation data's 'labels' belong to (default: the one "
                   "classification output; or use labels_<output> keys in the .npz).")
@click.option("--tolerance", "tolerances", multiple=True, metavar="KEY=VALUE")
@click.option("--config", "config_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path))
@click.option("--seed", type=int)
@click.option("--allow-random-calibration", is_flag=True, default=None,
              help="Calibrate int8 on seeded random data (accuracy numbers will mislead).")
@click.option("--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
              help="Per bundle (conversion + validation); default 1800.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@click.option("--quiet", is_flag=True)
def build(model, targets, precisions, inputs, outputs, calib, eval_, tasks, labels_for,
          tolerances,
          config_file, out, seed, allow_random_calibration, timeout, as_json, quiet) -> None:
    """Convert MODEL for each target and precision, validate, and write bundles."""
    from edgepack.compare import parse_tolerance_option
    from edgepack.config import make_config, parse_task
    from edgepack.report.build_table import print_build
    from edgepack.signature import parse_input_option

    cfg = make_config(
        model, config_file,
        targets=_listed(targets), precisions=_listed(precisions),
        inputs=[parse_input_option(i) for i in inputs], outputs=list(outputs) or None,
        calib=calib, eval=eval_, task=parse_task(list(tasks)) if tasks else None,
        labels_for=labels_for,
        tolerances=dict(parse_tolerance_option(t) for t in tolerances),
        out=out, seed=seed, allow_random_calibration=allow_random_calibration,
        timeout=timeout,
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
        for note in summary.notes:
            err.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)
        for b in summary.bundles:
            if b.status == Status.FAILED:
                err.print(f"[bold red]FAILED[/] {b.name}: {b.reason}", soft_wrap=True)
    sys.exit(summary.exit_code)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--baseline", type=click.Path(path_type=Path),
              help="Previous dist (or its summary.json) to compare with: bundles pair by "
                   "target and precision.")
@click.option("--max-drop", "max_drop", multiple=True, metavar="METRIC=VALUE",
              help="Largest allowed drop vs the baseline, repeatable; METRIC=off disables one. "
                   "task_accuracy in points (default 0.5); top1_agreement, top5_agreement, "
                   "cosine_min, cosine_mean as fractions (defaults top1_agreement=0.01, "
                   "cosine_min=0.01); snr_db in dB.")
@click.option("--max-size-growth", metavar="FRACTION|PCT%",
              help="Largest allowed model size growth vs the baseline: 0.1 or 10% (default), "
                   "off to skip.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path),
              help="Write JUnit XML: one test case per bundle.")
@click.option("--markdown", "markdown_path", type=click.Path(path_type=Path),
              help="Write a markdown summary table (also appended to $GITHUB_STEP_SUMMARY "
                   "when that is set).")
@click.option("--json", "as_json", is_flag=True)
def validate(paths, baseline, max_drop, max_size_growth, junit_path, markdown_path,
             as_json) -> None:
    """CI gate: verify hashes, re-run golden inputs on the host, apply tolerances.

    With --baseline, also fail (exit 1) when a bundle's accuracy dropped beyond
    --max-drop, its size grew beyond --max-size-growth, its status got worse
    (passed > deferred > failed), or a baseline bundle is missing. Each failure
    is one line on stderr naming the bundle, the metric, old and new values.
    """
    from edgepack.errors import UsageError
    from edgepack.report.gate import Limits, parse_max_drop, parse_size_growth

    if baseline is None and (max_drop or max_size_growth):
        raise UsageError("--max-drop and --max-size-growth compare with a baseline: "
                         "add --baseline OLD_DIST")
    limits = Limits(parse_max_drop(max_drop), parse_size_growth(max_size_growth))
    verdicts = api.gate(list(paths), baseline, limits)
    label = [v.new.folder.name if v.new is not None and v.new.folder is not None else v.name
             for v in verdicts]
    if as_json:
        click.echo(json.dumps([{"bundle": n, "status": v.status, "lines": v.lines}
                               for n, v in zip(label, verdicts, strict=True)], indent=2))
    else:
        for n, v in zip(label, verdicts, strict=True):
            mark = {Status.PASSED: "ok", Status.DEFERRED: "deferred",
                    Status.FAILED: "FAILED"}[v.status]
            click.echo(f"{mark:8} {n}" + (" (missing)" if v.new is None else ""))
    for v in verdicts:
        for line in v.lines:
            if v.status == Status.FAILED:
                click.echo(line, err=True)
    _write_reports(verdicts, baseline, junit_path, markdown_path)
    sys.exit(1 if any(v.status == Status.FAILED for v in verdicts) else 0)


def _write_reports(verdicts, baseline, junit_path, markdown_path) -> None:
    from edgepack.report.junit import junit_xml
    from edgepack.report.markdown import summary_markdown

    if junit_path is not None:
        junit_path.write_text(junit_xml(verdicts))
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if markdown_path is None and not step_summary:
        return
    text = summary_markdown(verdicts, str(baseline) if baseline else None)
    if markdown_path is not None:
        markdown_path.write_text(text)
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as f:
            f.write(text + "\n")


@main.command()
@click.argument("dist", type=click.Path(path_type=Path))
@click.option("--results", type=click.Path(path_type=Path),
              help="Folder of bench.py --json results collected from devices.")
@click.option("--html", "html_path", type=click.Path(path_type=Path),
              help="Write one self-contained HTML file (no scripts, no network).")
@click.option("--host-runs", type=click.IntRange(min=0), default=100, show_default=True,
              help="Timed runs of each bundle's harness on this machine; 0 skips host latency.")
@click.option("--title", help="Page title of the HTML report.")
def report(dist, results, html_path, host_runs, title) -> None:
    """Table and plots of a dist: size vs accuracy, host and device latency."""
    from edgepack.report.terminal import report_table

    say, status = _progress(False)
    if say is not None:
        say("measuring host latency with each bundle's harness")
    try:
        data = api.report(dist, results, host_runs)
    finally:
        if status is not None:
            status.stop()
    # CI logs are not terminals: do not squeeze the table into 80 columns there.
    out = stdout if stdout.is_terminal else Console(highlight=False, width=140)
    out.print(report_table(data))
    for note in data.notes:
        err.print(f"note: {note}", markup=False, soft_wrap=True)
    if html_path is not None:
        from edgepack.report.html import render

        html_path.write_text(render(data, title), encoding="utf-8")
        err.print(f"wrote {html_path}", markup=False)


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
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Archive path (default: BUNDLE.tar.gz beside it).")
def pack(bundle, output) -> None:
    """Write a bundle as a reproducible .tar.gz."""
    from edgepack.bundle.archive import pack as pack_bundle

    path = pack_bundle(bundle, output or bundle.with_name(bundle.name + ".tar.gz"))
    click.echo(str(path))


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
def verify(path) -> None:
    """Check every file of a bundle, dist folder or archive against its manifest."""
    from edgepack.bundle.archive import verify as verify_path

    problems = verify_path(path)
    for line in problems:
        click.echo(line, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"ok {path}")


@main.command()
def doctor() -> None:
    """Which backends and runtimes are usable here, and why not."""
    from edgepack.doctor import checks

    for name, ok, detail in checks():
        click.echo(f"{'ok' if ok else 'missing':8} {name:24} {detail}")


if __name__ == "__main__":
    main()

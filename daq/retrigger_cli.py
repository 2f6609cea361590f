"""``na64 retrigger``: re-evaluate the trigger on recorded spills with other settings (in parallel)."""

from __future__ import annotations

import argparse
import functools
import html
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from daq.config_loader import output_file
from daq.errors import UserError
from daq.offline import WORKERS_HELP, collect_spill_files, default_workers, map_spills, merge_all
from daq.retrigger import format_table, parse_overrides, retrigger_file

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "retrigger",
        help="what-if trigger emulation on recorded spills",
        description="Re-evaluate the trigger on the recorded primitives of spill files with other settings "
        "(the live DAQ's trigger functions) and report, per spill and in total, how many recorded events "
        "would still be accepted by trigger type and how the missing-energy spectrum changes. Runs the files "
        "in parallel on dask (a local cluster by default). Example: "
        "na64 retrigger na64-data --set ecal_max_gev=70 --set prs_min_gev=0.5 --plot emiss.svg",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILES", help="spill files or directories")
    p.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='a trigger setting (e.g. ecal_max_gev=70, trigger.masked_cells=["ECAL23"]); repeatable',
    )
    p.add_argument("--plot", type=Path, default=None, help="write the E_miss spectra to FILE (.svg or .html)")
    p.add_argument("--json", dest="json_out", type=Path, default=None, help="write the full result as JSON")
    p.add_argument(
        "--calibration",
        action="append",
        default=[],
        metavar="FILE",
        help="calibration constants for the gains (repeatable; default nominal)",
    )
    p.add_argument("--beam-energy", type=float, default=100.0, help="beam energy in GeV (E_miss axis)")
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="dask scheduler of an existing cluster (default: a local cluster)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help=f"{WORKERS_HELP} (default: one per core, at most one per file; a single file, or no dask "
        "installed: in this process)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.settings)
    if args.plot is not None and args.plot.suffix.lower() not in (".svg", ".html"):
        raise UserError(f"--plot {args.plot}: the file name must end in .svg or .html")
    if args.plot is not None and args.plot.suffix.lower() == ".html":
        from daq.extras import require

        require("offline", "--plot FILE.html", ("bokeh",))
    for flag, path in (("--plot", args.plot), ("--json", args.json_out)):
        if path is not None:
            output_file(path, flag)
    if not args.beam_energy > 0:
        raise UserError(f"--beam-energy must be > 0 (got {args.beam_energy})")
    files, partial = collect_spill_files(args.files)
    if not files:
        raise UserError(f"no spill files in {', '.join(map(str, args.files))}")
    task = functools.partial(
        retrigger_file,
        overrides=overrides,
        calibration=[str(c) for c in args.calibration],
        beam_energy_gev=args.beam_energy,
    )
    workers = args.workers
    if workers is None and args.scheduler is None:
        workers = default_workers(len(files))
    out = map_spills(task, files, scheduler=args.scheduler, workers=workers)
    skipped = partial + out.skipped
    for s in partial:
        log.warning("skipping %s", s.reason)
    if not out.results:
        raise UserError(f"none of the {len(files) + len(partial)} files could be read")
    total = merge_all(out.results)
    print(format_table(total, overrides))
    print(
        f"{len(out.results)} spills in {out.seconds:.1f} s on {out.workers or 'no'} dask workers; "
        f"{len(skipped)} files skipped"
    )
    for s in skipped:
        print(f"  skipped {s.path.name}: {s.reason}")
    if args.plot is not None:
        write_plot(args.plot, total, overrides)
        print(f"plot written to {args.plot}")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(_jsonable(total), indent=1) + "\n")
        print(f"result written to {args.json_out}")
    return 0


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---------------------------------------------------------------- plots
def write_plot(path: Path, total: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """The recorded and new E_miss spectra of the physics triggers, as SVG or standalone Bokeh HTML."""
    counts_old, edges = total["hist"]["e_miss_recorded"]
    counts_new, _ = total["hist"]["e_miss_new"]
    title = "E_miss of physics triggers: recorded vs " + (
        ", ".join(f"{k}={v}" for k, v in overrides.items()) or "recorded settings"
    )
    series = {"recorded": np.asarray(counts_old), "new settings": np.asarray(counts_new)}
    try:
        if path.suffix.lower() == ".html":
            text = bokeh_html(edges, series, title)
        else:
            text = svg_steps(edges, series, title)
        path.write_text(text)
    except OSError as e:
        raise UserError(f"cannot write --plot {path}: {e.strerror}") from None


COLORS = ("#1f77b4", "#d62728", "#2ca02c")


def svg_steps(
    edges: np.ndarray, series: Mapping[str, np.ndarray], title: str, width: int = 720, height: int = 420
) -> str:
    """A step-histogram plot as a standalone SVG document (pure; no plotting library needed)."""
    left, right, top, bottom = 60, 20, 40, 50
    w, h = width - left - right, height - top - bottom
    x0, x1 = float(edges[0]), float(edges[-1])
    ymax = max([float(np.max(c)) for c in series.values() if np.size(c)] + [1.0]) * 1.1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + h - y / ymax * h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="black"/>',
    ]
    for i in range(6):
        xv = x0 + (x1 - x0) * i / 5
        yv = ymax * i / 5
        parts.append(f'<text x="{sx(xv):.1f}" y="{top + h + 16}" text-anchor="middle">{xv:.0f}</text>')
        parts.append(f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.0f}</text>')
    parts.append(f'<text x="{left + w / 2}" y="{height - 10}" text-anchor="middle">E_miss [GeV]</text>')
    for n, (label, counts) in enumerate(series.items()):
        color = COLORS[n % len(COLORS)]
        pts = []
        for i, c in enumerate(np.asarray(counts, dtype=np.float64)):
            pts.append(f"{sx(float(edges[i])):.1f},{sy(c):.1f}")
            pts.append(f"{sx(float(edges[i + 1])):.1f},{sy(c):.1f}")
        parts.append(
            f'<polyline class="series" data-label="{html.escape(label)}" fill="none" stroke="{color}" '
            f'stroke-width="1.5" points="{" ".join(pts)}"/>'
        )
        parts.append(
            f'<text x="{left + 10}" y="{top + 18 + 16 * n}" fill="{color}">{html.escape(label)} '
            f"({int(np.sum(counts))} events)</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def bokeh_html(edges: np.ndarray, series: Mapping[str, np.ndarray], title: str) -> str:
    """The same plot as a standalone interactive Bokeh HTML page (resources inlined: works offline)."""
    from bokeh.embed import file_html
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    fig = figure(title=title, x_axis_label="E_miss [GeV]", y_axis_label="events", width=800, height=450)
    for n, (label, counts) in enumerate(series.items()):
        c = np.asarray(counts, dtype=np.float64)
        fig.step(
            np.asarray(edges[:-1], dtype=np.float64),
            c,
            mode="after",
            legend_label=label,
            color=COLORS[n % len(COLORS)],
            line_width=2,
        )
    return str(file_html(fig, INLINE, title))

"""Write the tables of docs/protocol.md that come from the code (channel map, readout groups, primitive
channels, trigger block, nominal gains, constants, the checks of ``na64 conformance``), so that they cannot drift from ``daq.detector``.

    python tools/gen_protocol_tables.py            # rewrite the generated blocks of docs/protocol.md
    python tools/gen_protocol_tables.py --check    # exit 1 and name the blocks that differ (the test does)

Each table sits between ``<!-- BEGIN GENERATED: name -->`` and ``<!-- END GENERATED: name -->`` in the
page; the text around them is written by hand. A block named in the page but not made here, or made here
but missing from the page, is an error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daq import detector, protocol
from daq.conformance import CHECKS
from daq.trigger import THRESHOLD_RTOL, TriggerConfig
from daq.waveform import RecoConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.S
)

_SHAPE_TEXT = {
    detector.PulseShape.EM: "EM (rise ~12 ns, FWHM ~40 ns)",
    detector.PulseShape.HADRONIC: "HADRONIC (FWHM ~70 ns)",
    detector.PulseShape.FAST: "FAST (FWHM ~30 ns)",
}


def _table(header: list[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    align = align or "|".join("---" for _ in header)
    lines = ["| " + " | ".join(header) + " |", "|" + align + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _pos(v: int) -> str:
    return "" if v < 0 else str(v)


def channel_map() -> str:
    ch = detector.CHANNELS
    rows = [
        [
            int(r["id"]),
            r["name"].decode(),
            detector.Detector(int(r["detector"])).name,
            int(r["group"]),
            _pos(int(r["module"])),
            _pos(int(r["x"])),
            _pos(int(r["y"])),
            detector.PulseShape(int(r["shape"])).name,
        ]
        for r in ch
    ]
    return _table(
        ["id", "name", "detector", "group", "module", "x", "y", "shape class"],
        rows,
        "---:|---|---|---:|---:|---:|---:|---",
    )


def readout_groups() -> str:
    rows = []
    for g in detector.Detector:
        ids = detector.GROUP_IDS[g]
        names = [detector.channel_name(int(i)) for i in ids]
        shape = detector.PulseShape(int(detector.CHANNELS["shape"][ids[0]]))
        rows.append(
            [
                int(g),
                g.name,
                f"{int(ids[0])}-{int(ids[-1])}",
                ids.size,
                _SHAPE_TEXT[shape],
                f"{names[0]}, {names[1]}, ... {names[-1]}" if len(names) > 3 else ", ".join(names),
            ]
        )
    return _table(
        [
            "source (group)",
            "detector",
            "channel ids",
            "M (n_channels)",
            "shape class",
            "FRAGMENT channel order (row m = id first + m)",
        ],
        rows,
        "---:|---|---|---:|---|---",
    )


def primitive_channels() -> str:
    prim = detector.default_primitive_channels()
    rows = [[r, int(c), detector.channel_name(int(c))] for r, c in enumerate(prim)]
    return (
        f"`default_primitive_channels()`: C = {prim.size} rows, the `prim_channels` frame of RUN_START "
        "(little-endian u16, in this order):\n\n"
        + _table(["amp row", "channel id", "name"], rows, "---:|---:|---")
        + "\nAs one line: `"
        + " ".join(str(int(c)) for c in prim)
        + "`\n"
    )


def trigger_block() -> str:
    cells = detector.block_cells()
    xs = sorted({x for x, _ in cells})
    ys = sorted({y for _, y in cells})
    nx, ny = detector.BLOCK_SIZE
    head = ["y \\ x", *[str(x) for x in range(detector.ECAL_NX)]]
    rows = []
    for y in range(detector.ECAL_NY):
        row: list[object] = [y]
        for x in range(detector.ECAL_NX):
            text = f"{detector.ecal_id(x, y)} / {detector.prs_id(x, y)}"
            if x in xs and y in ys:
                text = f"**{text}**"
            if (x, y) == detector.BEAM_CELL:
                text += " (beam)"
            row.append(text)
        rows.append(row)
    return (
        f"ECAL / PRS channel ids of the {detector.ECAL_NX}x{detector.ECAL_NY} grid (id = base + y x "
        f"{detector.ECAL_NX} + x; ECAL base {detector.ECAL_BASE}, PRS base {detector.PRS_BASE}); the "
        f"{nx}x{ny} trigger block around the beam cell {detector.BEAM_CELL} in bold (x {xs[0]}..{xs[-1]}, "
        f"y {ys[0]}..{ys[-1]}):\n\n"
        + _table(head, rows, "---:|" + "|".join("---" for _ in range(detector.ECAL_NX)))
    )


def nominal_gains() -> str:
    t = TriggerConfig()
    rows = []
    ranges = {
        detector.Detector.ECAL: "~80 GeV per cell",
        detector.Detector.PRS: "~8 GeV per cell",
        detector.Detector.HCAL: "~60 GeV per cell",
        detector.Detector.VETO: "~20 MIP (10 MeV each) per slab",
        detector.Detector.SRD: "~80 MeV per module",
        detector.Detector.COUNTER: "a beam particle: ~0.3 MeV, ~300 counts",
    }
    for det, g in detector.NOMINAL_GAIN.items():
        rows.append([det.name, f"{g:g}", f"{1000 * g:.10g}", ranges[det]])
    gain = detector.NOMINAL_GAIN
    prs = int(np.floor(t.prs_min_gev * 1000 * gain[detector.Detector.PRS] * (1 + THRESHOLD_RTOL)))
    ecal = int(np.ceil(t.ecal_max_gev * 1000 * gain[detector.Detector.ECAL] * (1 - THRESHOLD_RTOL)))
    thr = [
        ["S_PRS", f"E_PRS(block) > {t.prs_min_gev:g} GeV", f"sum of the 12 PRS block amplitudes > {prs}"],
        ["S_EC", f"E_ECAL(block) < {t.ecal_max_gev:g} GeV", f"sum of the 12 ECAL block amplitudes < {ecal}"],
        [
            "S_TRIG",
            "S0, S2, S3 fire, V1, V2 do not",
            f"a counter fires when its amplitude > {t.s0_adc} (s0_adc ... v2_adc)",
        ],
    ]
    return (
        _table(["detector", "gain (ADC counts / MeV)", "ADC counts / GeV", "largest deposit in range"], rows)
        + "\nThe default trigger thresholds in ADC counts at these gains (amplitudes above pedestal, as in "
        "SLICE `amp`; the DAQ compares integer sums exactly):\n\n"
        + _table(["condition", "threshold", "in ADC counts (nominal gains)"], thr)
    )


def constants() -> str:
    t, r = TriggerConfig(), RecoConfig()
    period = detector.SAMPLE_PERIOD_NS
    rows: list[list[object]] = [
        ["channels (`n_channels` of RUN_START)", "`daq.detector.N_CHANNELS`", detector.N_CHANNELS],
        ["readout groups (FRAGMENT `source` 0..N-1)", "`daq.detector.N_GROUPS`", detector.N_GROUPS],
        ["samples per window (`n_samples`)", "`daq.detector.N_SAMPLES`", detector.N_SAMPLES],
        [
            "sample period (`sample_period_ps`)",
            "`daq.detector.SAMPLE_PERIOD_NS`",
            f"{period:g} ns = {round(period * 1000)} ps (80 MS/s)",
        ],
        ["window length", "n_samples x period", f"{detector.N_SAMPLES * period:g} ns"],
        ["largest sample (12-bit ADC)", "`daq.detector.ADC_MAX`", detector.ADC_MAX],
        ["nominal pedestal", "`daq.detector.NOMINAL_PEDESTAL`", f"{detector.NOMINAL_PEDESTAL:g} counts"],
        [
            "in-time pulse peak in the window",
            "`RecoConfig.expected_peak_ns`",
            f"{r.expected_peak_ns:g} ns = sample {r.expected_peak_ns / period:g}",
        ],
        ["random-trigger index", "`daq.protocol.NO_PARTICLE`", f"0x{protocol.NO_PARTICLE:08X}"],
        ["header `source` when not a FRAGMENT", "`daq.protocol.NO_SOURCE`", f"0x{protocol.NO_SOURCE:04X}"],
        ["array frames per message at most", "`daq.protocol.MAX_FRAMES`", protocol.MAX_FRAMES],
        ["largest array dimension", "`daq.protocol.MAX_DIM`", f"2^28 = {protocol.MAX_DIM}"],
        ["fixed header size", "`daq.protocol.HEADER_SIZE`", f"{protocol.HEADER_SIZE} B"],
        ["array descriptor size", "`daq.protocol.DESCRIPTOR_SIZE`", f"{protocol.DESCRIPTOR_SIZE} B"],
        ["beam prescale (default)", "`trigger.beam_prescale`", t.beam_prescale],
        ["random-trigger period (default)", "`trigger.random_period_ns`", f"{t.random_period_ns} ns"],
        ["dead time (default)", "`trigger.dead_time_ns`", f"{t.dead_time_ns} ns"],
        ["beam cell (default)", "`trigger.beam_cell`", f"{t.beam_cell}"],
        ["trigger block (default, nx x ny)", "`trigger.block_size`", f"{t.block_size[0]}x{t.block_size[1]}"],
    ]
    return _table(["quantity", "name in the code", "value"], rows)


def conformance_checks() -> str:
    return _table(["check", "what it verifies"], [[f"`{name}`", text] for name, text in CHECKS.items()])


#: generated block name -> its text
GENERATORS: dict[str, Callable[[], str]] = {
    "constants": constants,
    "channel-map": channel_map,
    "readout-groups": readout_groups,
    "primitive-channels": primitive_channels,
    "trigger-block": trigger_block,
    "nominal-gains": nominal_gains,
    "conformance-checks": conformance_checks,
}


def render(text: str) -> tuple[str, list[str]]:
    """The page with every generated block rewritten, and the names of the blocks that changed.

    Raises ValueError when a generated block is missing from the page or the page names an unknown one.
    """
    found = [m.group("name") for m in BLOCK.finditer(text)]
    unknown = sorted(set(found) - set(GENERATORS))
    missing = sorted(set(GENERATORS) - set(found))
    if unknown or missing:
        raise ValueError(f"generated blocks: unknown {unknown}, missing {missing}")
    changed: list[str] = []

    def fill(m: re.Match[str]) -> str:
        name = m.group("name")
        body = GENERATORS[name]()
        if body != m.group("body"):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fill, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a block differs")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page (default: docs/protocol.md)")
    args = parser.parse_args(argv)
    try:
        text = args.doc.read_text()
        new, changed = render(text)
    except (OSError, ValueError) as e:
        print(f"gen_protocol_tables: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(
                f"{args.doc}: generated blocks out of date: {', '.join(changed)} "
                "(run python tools/gen_protocol_tables.py)",
                file=sys.stderr,
            )
            return 1
        print(f"{args.doc}: {len(GENERATORS)} generated blocks up to date")
        return 0
    if changed:
        args.doc.write_text(new)
    print(f"{args.doc}: rewrote {', '.join(changed) or 'nothing (up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

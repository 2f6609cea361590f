"""The Bokeh document of one browser session: a summary tab first, then detector and rate tabs.

Every session reads the shared :class:`~dqm.snapshot.Snapshot` (never the monitor) and is updated only
in its own document callbacks. Updates carry just the header and the visible tab (fixed sizes). A session
sends a new update only when the browser has acknowledged the previous ones (the page echoes a sequence
number back), so a slow or vanished browser gets fewer updates and delays nobody else.

The view is in the URL: ``?tab=ecal&range=run&cell=2,3`` (cell: ECAL ``x,y`` or a channel name such as
``HCAL0_11``), read when the session starts and rewritten in the page with ``history.replaceState``.
"""

from __future__ import annotations

import html
import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    CustomJS,
    DataRange1d,
    FactorRange,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    LogColorMapper,
    Plot,
    Range1d,
    SaveTool,
    TabPanel,
    Tabs,
)
from bokeh.models.annotations import BoxAnnotation, ColorBar, Span, Title
from bokeh.models.widgets import Button, Div, RadioButtonGroup, Select, TextInput
from bokeh.palettes import Category10_10, Viridis256
from bokeh.plotting import figure

from daq import detector
from dqm import render
from dqm.book import TIME_ROWS
from dqm.config import DqmConfig
from dqm.snapshot import CHANNEL_NAMES, RANGES, Axes, RangeView, Snapshot

log = logging.getLogger(__name__)

TABS = ("summary", "physics", "ecal", "hcal", "rates", "waveforms", "checks")
TAB_TITLES = ("Summary", "Physics", "ECAL/PRS", "HCAL/VETO/SRD", "Rates", "Waveforms", "Checks")
STATE_COLORS = render.STATE_COLORS
#: widths of the summary tab's two columns (px)
LEFT_W, RIGHT_W = 820, 540
#: shelve durations offered on the page (minutes)
SHELVE_CHOICES = {"15 min": 15.0, "1 h": 60.0, "4 h": 240.0, "8 h": 480.0}
STATE_OF_VALUE = {-1: "UNKNOWN", 0: "OK", 1: "WARN", 2: "ERROR"}
#: updates a browser may have unacknowledged before its session waits
MAX_IN_FLIGHT = 2
#: without any acknowledgement for this long, a session still sends one update (s)
ACK_TIMEOUT_S = 10.0
DEFAULT_CELL = detector.channel_name(detector.ecal_id(*detector.BEAM_CELL))


class Controller(Protocol):
    """What a session may ask of the service (thread-safe there)."""

    def reset(self) -> None: ...

    def acknowledge(self, name: str, by: str) -> None: ...

    def shelve(self, name: str, reason: str, minutes: float, by: str) -> None: ...


# ---------------------------------------------------------------- URL state
@dataclass(frozen=True)
class View:
    tab: int = 0
    range: int = 0
    cell: str = DEFAULT_CELL


def parse_cell(text: str) -> str:
    """Channel name from ``x,y`` (an ECAL cell) or a channel name; ValueError if neither."""
    text = text.strip()
    if "," in text:
        xs, ys = text.split(",", 1)
        return detector.channel_name(detector.ecal_id(int(xs), int(ys)))
    if text.upper() in CHANNEL_NAMES:
        return text.upper()
    raise ValueError(f"unknown cell {text!r}")


def parse_view(args: Mapping[str, list[bytes]] | None) -> View:
    """The view asked for in the page URL; unknown values fall back to the defaults (and are logged)."""
    args = args or {}

    def arg(name: str) -> str | None:
        values = args.get(name)
        return values[0].decode("utf-8", errors="replace") if values else None

    tab, rng, cell = 0, 0, DEFAULT_CELL
    if (t := arg("tab")) is not None:
        tab = TABS.index(t) if t in TABS else 0
    if (r := arg("range")) is not None:
        rng = RANGES.index(r) if r in RANGES else 0
    if (c := arg("cell")) is not None:
        try:
            cell = parse_cell(c)
        except ValueError as e:
            log.info("ignoring URL parameter: %s", e)
    return View(tab, rng, cell)


_URL_JS = """
const p = new URLSearchParams(window.location.search);
p.set('tab', tab_names[tabs.active]);
p.set('range', range_names[rng.active]);
p.set('cell', cell.value);
window.history.replaceState(null, '', window.location.pathname + '?' + p.toString());
"""

_META_JS = """
const d = meta.data;
const seq = d.seq[0];
const w = window.na64 = window.na64 || {lat: [], updates: 0};
w.seq = seq; w.eot = d.eot[0]; w.run = d.run[0]; w.spill = d.spill[0]; w.updates += 1;
const sent = d.send_ms[0];
requestAnimationFrame(() => {
  if (sent > 0 && sent !== w.last_sent) {
    w.last_sent = sent; w.lat.push(Date.now() - sent);
    if (w.lat.length > 2000) w.lat.shift();
  }
  ack.text = String(seq);
});
"""


# ---------------------------------------------------------------- small builders
def _fig(
    title: str,
    width: int = 460,
    height: int = 300,
    tools: str = "pan,box_zoom,wheel_zoom,reset,save",
    **kw: Any,
) -> Any:
    p = figure(title=title, width=width, height=height, tools=tools, **kw)
    p.toolbar.logo = None
    return p


def _hist_source(edges: np.ndarray) -> ColumnDataSource:
    return ColumnDataSource({"left": edges[:-1], "right": edges[1:], "top": np.zeros(edges.size - 1)})


def _hist_plot(
    title: str, edges: np.ndarray, xlabel: str, log_y: bool = False, color: str = "#1f77b4", width: int = 460
) -> tuple[Any, ColumnDataSource]:
    src = _hist_source(edges)
    p = _fig(
        title,
        width=width,
        y_axis_type="log" if log_y else "linear",
        x_axis_label=xlabel,
        y_axis_label="entries",
    )
    p.quad(
        left="left",
        right="right",
        top="top",
        bottom=0.5 if log_y else 0,
        source=src,
        fill_color=color,
        line_color=color,
        fill_alpha=0.6,
    )
    if log_y:
        p.y_range = Range1d(start=0.5, end=10)
    return p, src


def _set_hist(src: ColumnDataSource, counts: np.ndarray, fig: Any = None, log_y: bool = False) -> None:
    src.data.update(top=np.asarray(counts, np.float64))
    if fig is not None and log_y:
        fig.y_range.end = max(10.0, float(np.max(counts, initial=0)) * 2)


def _image_plot(
    title: str, ex: np.ndarray, ey: np.ndarray, xlabel: str, ylabel: str
) -> tuple[Any, ColumnDataSource]:
    mapper = LogColorMapper(palette=Viridis256, low=1, high=10, nan_color="rgba(0,0,0,0)")
    p = _fig(
        title,
        width=460,
        height=380,
        x_range=(ex[0], ex[-1]),
        y_range=(ey[0], ey[-1]),
        x_axis_label=xlabel,
        y_axis_label=ylabel,
    )
    src = ColumnDataSource({"image": [np.full((ey.size - 1, ex.size - 1), np.nan, np.float32)]})
    p.image(
        image="image", x=ex[0], y=ey[0], dw=ex[-1] - ex[0], dh=ey[-1] - ey[0], color_mapper=mapper, source=src
    )
    p.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
    return p, src


def _set_image(src: ColumnDataSource, counts2d: np.ndarray, mapper: Any) -> None:
    img = np.asarray(counts2d, np.float32).T.copy()
    img[img <= 0] = np.nan
    src.data.update(image=[img])
    mapper.high = max(10.0, float(np.nanmax(img, initial=1.0)) if np.isfinite(img).any() else 10.0)


def _cell_map(
    title: str, ids: np.ndarray, xs: np.ndarray, ys: np.ndarray, width: int, height: int, unit: str
) -> tuple[Any, ColumnDataSource, LinearColorMapper]:
    mapper = LinearColorMapper(palette=Viridis256, low=0, high=1)
    src = ColumnDataSource(
        {
            "x": xs + 0.5,
            "y": ys + 0.5,
            "name": [CHANNEL_NAMES[i] for i in ids],
            "value": np.zeros(ids.size),
            "label": [""] * ids.size,
        }
    )
    p = _fig(title, width=width, height=height, tools="tap,save", match_aspect=True)
    p.rect(
        x="x",
        y="y",
        width=0.95,
        height=0.95,
        source=src,
        fill_color={"field": "value", "transform": mapper},
        line_color="white",
        nonselection_fill_alpha=1.0,
        selection_line_color="red",
        selection_line_width=3,
    )
    p.text(
        x="x",
        y="y",
        text="label",
        source=src,
        text_align="center",
        text_baseline="middle",
        text_font_size="8pt",
        text_color="white",
    )
    p.add_tools(HoverTool(tooltips=[("channel", "@name"), (unit, "@value{0.000}")]))
    p.xaxis.visible = p.yaxis.visible = False
    p.xgrid.visible = p.ygrid.visible = False
    p.add_layout(ColorBar(color_mapper=mapper, width=8), "right")
    return p, src, mapper


_fmt = render.fmt


def _zero_based(fig: Any) -> None:
    """A quantity that starts at zero is drawn from zero (no suppressed zero)."""
    fig.y_range = DataRange1d(start=0)


@dataclass(frozen=True)
class TabView:
    """How one tab is built (its plots, when shown) and how a snapshot updates it."""

    build: Callable[[], Any]
    apply: Callable[[Snapshot, RangeView], None]


# ---------------------------------------------------------------- the session
class SessionView:
    """All models of one browser session and how a snapshot maps onto them."""

    def __init__(
        self, doc: Document, hub: SnapshotHub, controller: Controller, config: DqmConfig, view: View
    ) -> None:
        self.doc = doc
        self.hub = hub
        self.controller = controller
        self.config = config
        self.axes = hub.axes
        self.sent_seq = 0
        self.acked_seq = 0
        self.deferred = False
        self.skipped = 0
        self.last_ack = time.monotonic()
        self._sent: dict[str, Any] = {}
        self.applied: tuple[Any, ...] = ()
        #: every tab, explicitly: built when shown, updated from each snapshot while shown
        self.tab_views: dict[str, TabView] = {
            "summary": TabView(self._build_summary, self._apply_summary),
            "physics": TabView(self._build_physics, self._apply_physics),
            "ecal": TabView(self._build_ecal, self._apply_ecal),
            "hcal": TabView(self._build_hcal, self._apply_hcal),
            "rates": TabView(self._build_rates, self._apply_rates),
            "waveforms": TabView(self._build_waveforms, self._apply_waveforms),
            "checks": TabView(self._build_checks, self._apply_checks),
        }
        assert tuple(self.tab_views) == TABS
        #: plots of the shown tab with their titles: run, spill and range are added to titles and file names
        self._plots: list[tuple[Plot, str, str, Title]] = []
        #: a value shown in a plot's title (e.g. the peak position), set by the tab's update
        self._title_extra: dict[Plot, str] = {}
        self._build(view)

    # ------------------------------------------------------------ layout
    def _build(self, view: View) -> None:
        self._history_source = ColumnDataSource({"index": np.zeros(1), "n_beam": np.zeros(1)})
        # no fixed height: the header wraps instead of being clipped by the controls under it
        self.header = Div(
            text="NA64 DQM: waiting for data", css_classes=["na64-header"], width=LEFT_W + RIGHT_W
        )
        self.meta = ColumnDataSource({"seq": [0], "send_ms": [0.0], "eot": [0], "run": [-1], "spill": [-1]})
        self.ack = Div(text="0", visible=False, tags=[self.meta])  # tags: puts meta into the document
        self.ack.on_change("text", self._on_ack)
        self.meta.js_on_change("data", CustomJS(args={"meta": self.meta, "ack": self.ack}, code=_META_JS))
        # the state in the first document the browser gets counts as acknowledged once it is shown
        self.doc.js_on_event(
            "document_ready",
            CustomJS(args={"meta": self.meta, "ack": self.ack}, code="ack.text = String(meta.data.seq[0]);"),
        )
        self.range = RadioButtonGroup(
            labels=["Spill", f"Last {self.config.last_n_spills} spills", "Run"], active=view.range
        )
        self.cell = Select(title="", value=view.cell, options=list[str | None](CHANNEL_NAMES), width=140)
        self.reset_button = Button(label="Reset histograms", button_type="warning", width=150)
        self.reset_button.on_click(self._on_reset)

        self.holders = [column(Div(text="loading ...")) for _ in TAB_TITLES]
        self.panels = [
            TabPanel(child=holder, title=t) for holder, t in zip(self.holders, TAB_TITLES, strict=True)
        ]
        self.built: int | None = None
        self.tabs = Tabs(active=view.tab, tabs=self.panels)
        self._ensure_tab(view.tab)
        url = CustomJS(
            args={
                "tabs": self.tabs,
                "rng": self.range,
                "cell": self.cell,
                "tab_names": list(TABS),
                "range_names": list(RANGES),
            },
            code=_URL_JS,
        )
        self.tabs.js_on_change("active", url)
        self.range.js_on_change("active", url)
        self.cell.js_on_change("value", url)
        for model in (self.tabs, self.range, self.cell):
            model.on_change("active" if model is not self.cell else "value", self._on_view)
        controls = row(self.range, Div(text="cell:", width=35), self.cell, self.reset_button)
        self.doc.add_root(column(self.header, controls, self.tabs, self.ack))
        self.doc.title = "NA64 DQM"
        self.doc.add_next_tick_callback(self.update)

    def _ensure_tab(self, i: int) -> None:
        """Build the plots of the shown tab and drop those of the tab shown before: a session (and its
        browser) only ever holds one tab's plots, so neither grows with the number of tabs visited."""
        if self.built == i:
            return
        if self.built is not None:
            self.holders[self.built].children = [Div(text="loading ...")]
        self.built = i
        self._sent.clear()
        root = self.tab_views[TABS[i]].build()
        self.holders[i].children = [root]
        self._title_extra = {}
        self._plots = []
        for p in root.select({"type": Plot}):
            if isinstance(p, Plot) and isinstance(p.title, Title) and p.title.text:
                # a second title line: run, spill and range (also in a saved PNG)
                where = Title(text="", text_font_size="9pt", text_font_style="normal", text_color="#555555")
                p.add_layout(where, "above")
                self._plots.append((p, str(p.title.text), _slug(str(p.title.text)), where))

    def _tap_selects_cell(self, src: ColumnDataSource) -> None:
        src.selected.js_on_change(
            "indices",
            CustomJS(
                args={"src": src, "sel": self.cell},
                code=("const i = src.selected.indices; if (i.length) { sel.value = src.data.name[i[0]]; }"),
            ),
        )

    def _build_summary(self) -> Any:
        self.alarm_div = Div(text="", width=LEFT_W)
        self.aside_div = Div(text="", width=LEFT_W)
        self.lights = Div(text="", width=LEFT_W)
        self.numbers = Div(text="", width=RIGHT_W)
        self.history_div = Div(text="", width=RIGHT_W)
        self.alarm_select = Select(
            title="",
            value=self.hub.check_names[0] if self.hub.check_names else "",
            options=list[str | None](self.hub.check_names),
            width=190,
        )
        self._picked_at = -math.inf  # when a person last chose an alarm (then it is not moved for them)
        self.alarm_select.on_change("value", self._on_pick)
        self.ack_button = Button(label="Acknowledge", button_type="primary", width=110)
        self.ack_all = Button(label="Acknowledge all", width=125)
        self.ack_button.on_click(lambda: self._on_acknowledge(self.alarm_select.value))
        self.ack_all.on_click(lambda: self._on_acknowledge("all"))
        self.shelve_reason = TextInput(value="", placeholder="reason to shelve", width=190)
        self.shelve_for = Select(title="", value="1 h", options=list[str | None](SHELVE_CHOICES), width=80)
        self.shelve_button = Button(label="Shelve", button_type="warning", width=75)
        self.unshelve_button = Button(label="Unshelve", width=85)
        self.shelve_button.on_click(self._on_shelve)
        self.unshelve_button.on_click(self._on_unshelve)
        self.eot_fig = _fig("EOT per spill", width=RIGHT_W, height=220, x_axis_label="run/spill")
        _zero_based(self.eot_fig)
        self.eot_fig.vbar(x="index", top="n_beam", width=0.8, source=self._history_source, color="#1f77b4")
        controls = row(
            self.alarm_select,
            self.ack_button,
            self.ack_all,
            self.shelve_reason,
            self.shelve_for,
            self.shelve_button,
            self.unshelve_button,
        )
        return row(
            column(self.alarm_div, controls, self.aside_div, self.lights),
            column(self.numbers, self.eot_fig, self.history_div),
        )

    def _build_physics(self) -> Any:
        ax = self.axes
        cfg = self.config
        e_beam = cfg.beam_energy_gev
        self.emiss_fig, self.emiss_src = _hist_plot(
            "Missing energy, physics triggers", ax.h1["e_miss"], "E_miss = E_beam - E_ECAL [GeV]", log_y=True
        )
        self.emiss_fig.add_layout(
            BoxAnnotation(left=e_beam - cfg.signal_ecal_max_gev, fill_color="red", fill_alpha=0.08)
        )
        self.ecalhcal_fig, self.ecalhcal_src = _image_plot(
            "E_ECAL vs E_HCAL, physics triggers", *ax.h2["ecal_hcal"], "E_ECAL [GeV]", "E_HCAL [GeV]"
        )
        self.ecalhcal_fig.add_layout(
            BoxAnnotation(
                right=cfg.signal_ecal_max_gev, top=cfg.signal_hcal_max_gev, fill_color="red", fill_alpha=0.15
            )
        )
        # the signal region magnified: E_HCAL in 0.1 GeV bins, the signal box outlined
        self.zoom_fig, self.zoom_src = _image_plot(
            "Signal region: E_ECAL vs E_HCAL < few GeV",
            *ax.h2["ecal_hcal_zoom"],
            "E_ECAL [GeV]",
            "E_HCAL [GeV]",
        )
        self.zoom_fig.add_layout(
            BoxAnnotation(
                left=0,
                right=cfg.signal_ecal_max_gev,
                bottom=0,
                top=cfg.signal_hcal_max_gev,
                fill_alpha=0.0,
                line_color="red",
                line_width=2,
            )
        )
        self.signal_div = Div(text="", width=460)
        self.prsecal_fig, self.prsecal_src = _image_plot(
            "PRS vs ECAL energy, physics and beam triggers", *ax.h2["prs_ecal"], "E_ECAL [GeV]", "E_PRS [GeV]"
        )
        self.peak_fig, self.peak_src = _hist_plot(
            "ECAL electron peak, beam triggers", ax.h1["ecal_sum_beam"], "E_ECAL [GeV]"
        )
        self.peak_span = Span(location=e_beam, dimension="height", line_color="red", line_dash="dashed")
        self.peak_fig.add_layout(self.peak_span)
        self.hcal_phys_fig, self.hcal_phys_src = _hist_plot(
            "HCAL energy, physics triggers", ax.h1["hcal_sum_phys"], "E_HCAL [GeV]", log_y=True
        )
        # the baseline (reference or run baseline) scaled to the range's entries, over each histogram
        self.overlays: dict[str, ColumnDataSource] = {}
        for name, fig in (
            ("e_miss", self.emiss_fig),
            ("ecal_sum_beam", self.peak_fig),
            ("hcal_sum_phys", self.hcal_phys_fig),
        ):
            edges = ax.h1[name]
            src = ColumnDataSource({"x": edges[:-1], "y": np.full(edges.size - 1, np.nan)})
            fig.step(
                x="x",
                y="y",
                source=src,
                mode="after",
                color="black",
                line_width=1.5,
                legend_label="reference",
            )
            fig.legend.location = "top_left"
            fig.legend.label_text_font_size = "8pt"
            self.overlays[name] = src
        return column(
            row(self.emiss_fig, self.ecalhcal_fig, column(self.zoom_fig, self.signal_div)),
            row(self.peak_fig, self.hcal_phys_fig, self.prsecal_fig),
        )

    def _build_ecal(self) -> Any:
        ax = self.axes
        # ecal / prs maps
        cx = detector.CHANNELS["x"].astype(float)
        cy = detector.CHANNELS["y"].astype(float)
        e_ids, p_ids = np.asarray(detector.ECAL_IDS), np.asarray(detector.PRS_IDS)
        self.ecal_mean = _cell_map("ECAL mean energy [GeV]", e_ids, cx[e_ids], cy[e_ids], 340, 360, "GeV")
        self.ecal_occ = _cell_map("ECAL occupancy", e_ids, cx[e_ids], cy[e_ids], 340, 360, "fraction")
        self.prs_mean = _cell_map("PRS mean energy [GeV]", p_ids, cx[p_ids], cy[p_ids], 340, 360, "GeV")
        self.prs_occ = _cell_map("PRS occupancy", p_ids, cx[p_ids], cy[p_ids], 340, 360, "fraction")
        self.spec_fig, self.spec_src = _hist_plot(
            "Cell spectrum", ax.spectrum_edges(0), "E [GeV]", log_y=True
        )
        for _, src, _ in (self.ecal_mean, self.ecal_occ, self.prs_mean, self.prs_occ):
            self._tap_selects_cell(src)
        return column(
            row(self.ecal_mean[0], self.ecal_occ[0], self.spec_fig), row(self.prs_mean[0], self.prs_occ[0])
        )

    def _build_hcal(self) -> Any:
        ax = self.axes
        cx = detector.CHANNELS["x"].astype(float)
        cy = detector.CHANNELS["y"].astype(float)
        # hcal, veto, srd, counters
        h_ids = np.asarray(detector.HCAL_IDS)
        hx = detector.CHANNELS["module"][h_ids] * 4.0 + cx[h_ids]
        self.hcal_mean = _cell_map(
            "HCAL mean energy [GeV] (modules 1-4)", h_ids, hx, cy[h_ids], 700, 240, "GeV"
        )
        self.hcal_occ = _cell_map("HCAL occupancy", h_ids, hx, cy[h_ids], 700, 240, "fraction")
        self.veto_fig, self.veto_src = _hist_plot(
            "VETO, physics triggers", ax.h1["veto_mip_phys"], "sum of slabs [MIP]", log_y=True
        )
        self.srd_fig, self.srd_src = _hist_plot(
            "SRD sum, beam triggers", ax.h1["srd_sum_beam"], "E_SRD [GeV]"
        )
        self.counter_fig = _fig("Counters (S0 S2 S3 V1 V2)", x_axis_label="E [MeV]", y_axis_label="entries")
        self.counter_src = ColumnDataSource(
            {
                "x": ax.spectrum_edges(int(detector.COUNTER_IDS[0]))[:-1] * 1e3,
                **{f"c{i}": np.zeros(100) for i in range(5)},
            }
        )
        for i, name in enumerate(detector.COUNTER_NAMES):
            self.counter_fig.step(
                x="x",
                y=f"c{i}",
                source=self.counter_src,
                color=Category10_10[i],
                legend_label=name,
                mode="after",
            )
        for _, src, _ in (self.hcal_mean, self.hcal_occ):
            self._tap_selects_cell(src)
        return column(
            row(self.hcal_mean[0], self.veto_fig), row(self.hcal_occ[0], self.srd_fig), row(self.counter_fig)
        )

    def _build_rates(self) -> Any:
        # rates
        h = self._history_source
        self.arrival_src = ColumnDataSource({"t": np.zeros(100), "n": np.zeros(100)})
        self.arrival_fig = _fig(
            "Beam intensity in the last spill",
            x_axis_label="time in spill [s]",
            y_axis_label="particles / bin",
        )
        self.arrival_fig.step(x="t", y="n", source=self.arrival_src, mode="after")
        self.ttimes_src = ColumnDataSource({"t": np.zeros(100), **{k: np.zeros(100) for k in TIME_ROWS}})
        self.ttimes_fig = _fig(
            "Monitored triggers vs time in spill",
            x_axis_label="time in spill [s]",
            y_axis_label="events / bin",
        )
        for i, k in enumerate(TIME_ROWS):
            self.ttimes_fig.step(
                x="t", y=k, source=self.ttimes_src, mode="after", color=Category10_10[i], legend_label=k
            )
        self.trig_fig = _fig("Triggers per spill", x_axis_label="run/spill")
        for i, k in enumerate(("physics", "beam", "random")):
            self.trig_fig.line(x="index", y=k, source=h, color=Category10_10[i], legend_label=k)
        self.eotcum_fig = _fig("EOT accumulated in the run", x_axis_label="run/spill")
        self.eotcum_fig.line(x="index", y="eot_cumulative", source=h, line_width=2)
        self.dead_fig = _fig("Dead-time fraction", x_axis_label="run/spill")
        self.dead_fig.line(x="index", y="dead_time", source=h, color="#d62728")
        self.loss_fig = _fig("DAQ losses by reason per spill", width=700, x_axis_label="run/spill")
        from dqm.monitor import LOSS_SERIES

        for i, reason in enumerate((*LOSS_SERIES, "other")):
            self.loss_fig.line(
                x="index",
                y=f"loss_{reason}",
                source=h,
                legend_label=reason,
                color=Category10_10[i % 10],
                line_dash="solid" if i < 10 else "dashed",
            )
        self.loss_fig.legend.label_text_font_size = "7pt"
        self.loss_fig.legend.location = "top_left"
        self.write_fig = _fig("Write rate [MB/s]", x_axis_label="run/spill")
        self.write_fig.line(x="index", y="write_mb_s", source=h)
        self.disk_fig = _fig("Free disk [GB]", x_axis_label="run/spill")
        self.disk_fig.line(x="index", y="free_disk_gb", source=h)
        for f in (
            self.arrival_fig,
            self.ttimes_fig,
            self.trig_fig,
            self.eotcum_fig,
            self.dead_fig,
            self.loss_fig,
            self.write_fig,
            self.disk_fig,
        ):
            _zero_based(f)
        rates = column(
            row(self.arrival_fig, self.ttimes_fig, self.trig_fig),
            row(self.eotcum_fig, self.dead_fig, self.write_fig),
            row(self.loss_fig, self.disk_fig),
        )
        return rates

    def _build_waveforms(self) -> Any:
        # waveforms, pedestals
        ns = detector.N_SAMPLES
        self.wave_src = ColumnDataSource(
            {"t": np.arange(ns) * detector.SAMPLE_PERIOD_NS, "adc": np.zeros(ns)}
        )
        self.wave_fig = _fig(
            "Latest event: waveform", width=600, x_axis_label="time [ns]", y_axis_label="ADC counts"
        )
        self.wave_fig.line(x="t", y="adc", source=self.wave_src, line_width=2)
        self.wave_fig.scatter(x="t", y="adc", source=self.wave_src, size=4)
        chan = np.arange(detector.N_CHANNELS, dtype=float)
        self.ped_src = ColumnDataSource(
            {
                "ch": chan,
                "name": CHANNEL_NAMES,
                "mean": np.zeros(chan.size),
                "noise": np.zeros(chan.size),
                "base_mean": np.zeros(chan.size),
                "base_noise": np.zeros(chan.size),
            }
        )
        self.ped_fig = _fig(
            "Pedestal mean per channel (pre-samples)",
            width=700,
            x_axis_label="channel id",
            y_axis_label="ADC counts",
        )
        self.ped_fig.scatter(x="ch", y="mean", source=self.ped_src, size=5, legend_label="now")
        self.ped_fig.line(x="ch", y="base_mean", source=self.ped_src, color="gray", legend_label="baseline")
        self.noise_fig = _fig(
            "Noise per channel (pre-sample RMS)",
            width=700,
            x_axis_label="channel id",
            y_axis_label="ADC counts",
        )
        self.noise_fig.scatter(
            x="ch", y="noise", source=self.ped_src, size=5, color="#d62728", legend_label="now"
        )
        self.noise_fig.line(
            x="ch", y="base_noise", source=self.ped_src, color="gray", legend_label="baseline"
        )
        for f in (self.ped_fig, self.noise_fig):
            f.add_tools(HoverTool(tooltips=[("channel", "@name"), ("value", "@$name{0.00}")]))
        self.wave_info = Div(text="", width=600, height=24)
        waves = column(row(column(self.wave_info, self.wave_fig)), row(self.ped_fig), row(self.noise_fig))
        return waves

    def _build_checks(self) -> Any:
        # checks history, alarm log
        self.matrix_src = ColumnDataSource({"x": [], "y": [], "color": [], "state": []})
        self.matrix_fig = figure(
            title="Check states, last 50 spills (right = latest)",
            width=1000,
            height=520,
            y_range=FactorRange(factors=list(reversed(self.hub.check_names)) or ["-"]),
            x_range=Range1d(start=-0.5, end=49.5),
            tools="hover,save",
            tooltips=[("check", "@y"), ("state", "@state")],
        )
        self.matrix_fig.rect(x="x", y="y", width=0.9, height=0.9, color="color", source=self.matrix_src)
        self.matrix_fig.toolbar.logo = None
        self.log_div = Div(text="", width=1000)
        checks = column(self.matrix_fig, self.log_div)
        return checks

    # ------------------------------------------------------------ events from the browser
    def _on_ack(self, attr: str, old: str, new: str) -> None:
        try:
            self.acked_seq = max(self.acked_seq, min(int(new), self.sent_seq))
        except ValueError:
            return
        self.last_ack = time.monotonic()
        if self.deferred:
            self.update()

    def _on_view(self, attr: str, old: Any, new: Any) -> None:
        self.update(force=True)

    def _on_reset(self) -> None:
        self.controller.reset()

    def _on_acknowledge(self, name: str) -> None:
        if name:
            self.controller.acknowledge(name, "browser")

    def _on_pick(self, attr: str, old: str, new: str) -> None:
        self._picked_at = time.monotonic()
        self.update(force=True)  # its history

    def _on_shelve(self) -> None:
        reason = self.shelve_reason.value.strip()
        name = self.alarm_select.value
        if name and reason:
            self.controller.shelve(name, reason, SHELVE_CHOICES.get(self.shelve_for.value, 60.0), "browser")
            self.shelve_reason.value = ""

    def _on_unshelve(self) -> None:
        if self.alarm_select.value:
            self.controller.shelve(self.alarm_select.value, "", 0.0, "browser")

    # ------------------------------------------------------------ applying a snapshot
    def notify(self) -> None:
        """A new snapshot exists (called on the server's event loop)."""
        self.doc.add_next_tick_callback(self.update)

    def update(self, force: bool = False) -> None:
        snap = self.hub.latest
        if snap is None:
            return
        key = (snap.version, snap.time, self.tabs.active, self.range.active, self.cell.value)
        if key == self.applied and not force:
            return
        now = time.monotonic()
        waiting = self.sent_seq - self.acked_seq >= MAX_IN_FLIGHT
        if waiting and not force and now - self.last_ack < ACK_TIMEOUT_S:
            self.deferred = True
            self.skipped += 1
            return
        if waiting:
            self.last_ack = now  # no answer for long (hidden tab?): send one update, then wait again
        self.deferred = False
        self.applied = key
        self.sent_seq += 1
        active = int(self.tabs.active or 0)
        self._ensure_tab(active)
        self._apply_header(snap)
        which = RANGES[int(self.range.active or 0)]
        self.tab_views[TABS[active]].apply(snap, snap.ranges[which])
        self._apply_titles(snap, which)

    def _apply_header(self, snap: Snapshot) -> None:
        h = snap.header
        _set_text(self.header, render.header(h, snap.reference_source))
        self.meta.data = {
            "seq": [self.sent_seq],
            "send_ms": [float(h["last_send_ms"])],
            "eot": [h["eot_run"]],
            "run": [h["run"]],
            "spill": [h["spill"]],
        }

    def _apply_titles(self, snap: Snapshot, which: str) -> None:
        """Run, spill and range in every plot's title and in the name of its saved PNG."""
        run, spill = snap.header["run"], snap.header["spill"]
        extra = tuple(sorted((id(p), t) for p, t in self._title_extra.items()))
        if not self._changed("titles", (run, spill, which, extra)):
            return
        where = f"run {run} spill {spill}" if run >= 0 else "no run yet"
        span = {
            "spill": "this spill",
            "last": f"last {self.config.last_n_spills} spills",
            "run": "whole run",
        }[which]
        for plot, title, slug, subtitle in self._plots:
            if isinstance(plot.title, Title):
                plot.title.text = f"{title}{self._title_extra.get(plot, '')}"
            subtitle.text = f"{where} ({span})"
            for tool in plot.select({"type": SaveTool}):
                if isinstance(tool, SaveTool):
                    tool.filename = f"na64_run{max(run, 0):06d}_spill{max(spill, 0):05d}_{slug}_{which}"

    def _apply_summary(self, snap: Snapshot, rv: RangeView) -> None:
        _set_text(self.alarm_div, render.alarm_table(snap.alarms, LEFT_W))
        _set_text(self.aside_div, render.set_aside(snap.shelved, snap.suppressed))
        _set_text(self.lights, render.lights(snap.checks, LEFT_W))
        h = snap.header
        trig = h["last_spill_triggers"]
        losses = ", ".join(f"{k} {v}" for k, v in h["last_spill_losses"].items() if v) or "none"
        dt = h["last_spill_dead_time"]
        _set_text(
            self.numbers,
            f"<table style='font-size:13px;width:{RIGHT_W - 10}px'>"
            f"<tr><td>EOT, run</td><td><b>{_fmt(h['eot_run'])}</b></td></tr>"
            f"<tr><td>EOT, last spill</td><td><b>{_fmt(h['eot_last_spill'])}</b></td></tr>"
            f"<tr><td>triggers, last spill</td><td>physics {_fmt(trig.get('physics'))}, beam "
            f"{_fmt(trig.get('beam'))}, random {_fmt(trig.get('random'))}</td></tr>"
            f"<tr><td>dead time</td><td>{'-' if dt is None else f'{100 * float(dt):.2f}%'}</td></tr>"
            f"<tr><td>losses, last spill</td><td>{html.escape(losses)}</td></tr>"
            f"<tr><td>spills / events monitored</td><td>{h['spills']} / {h['events']}</td></tr>"
            f"<tr><td>DAQ skipped / bad messages</td><td>{h['skipped_by_daq']} / "
            f"{h['decode_errors'] + h['bad_messages']}</td></tr>"
            f"<tr><td>free disk</td><td>{_fmt((h['free_disk_bytes'] or 0) / 1e9)} GB</td></tr></table>",
        )
        # the alarm list: pick the first one waiting for an acknowledgement, unless a person just chose
        waiting = [a["name"] for a in snap.alarms if not a.get("acknowledged", True)]
        chosen = self.alarm_select.value
        listed = {a["name"] for a in (*snap.alarms, *snap.shelved)}
        if waiting and chosen not in listed and time.monotonic() - self._picked_at > 30:
            self.alarm_select.value = waiting[0]
            self._picked_at = -math.inf  # set by the page, not by a person
        name = self.alarm_select.value
        _set_text(self.history_div, render.alarm_history(name, snap.alarm_history.get(name, [])))
        self._apply_history(snap)

    def _changed(self, what: str, key: Any) -> bool:
        """True (and remembered) if ``what`` has not been sent with this ``key`` since the tab was built."""
        if self._sent.get(what) == key:
            return False
        self._sent[what] = key
        return True

    def _apply_history(self, snap: Snapshot) -> None:
        if self._changed("history", (snap.header["run"], snap.header["spills"])):
            self._history_source.data = dict(snap.history)
            ticks, labels = snap.history_ticks
            for plot, *_ in self._plots:
                if plot.x_range is not None and any(
                    getattr(r, "data_source", None) is self._history_source for r in plot.renderers
                ):
                    plot.xaxis.ticker = FixedTicker(ticks=ticks)
                    plot.xaxis.major_label_overrides = {float(k): v for k, v in labels.items()}

    def _apply_physics(self, snap: Snapshot, rv: RangeView) -> None:
        _set_hist(self.emiss_src, rv.h1["e_miss"], self.emiss_fig, log_y=True)
        _set_image(self.ecalhcal_src, rv.h2["ecal_hcal"], self.ecalhcal_fig.renderers[0].glyph.color_mapper)
        _set_image(self.zoom_src, rv.h2["ecal_hcal_zoom"], self.zoom_fig.renderers[0].glyph.color_mapper)
        _set_image(self.prsecal_src, rv.h2["prs_ecal"], self.prsecal_fig.renderers[0].glyph.color_mapper)
        _set_hist(self.peak_src, rv.h1["ecal_sum_beam"])
        _set_hist(self.hcal_phys_src, rv.h1["hcal_sum_phys"], self.hcal_phys_fig, log_y=True)
        if math.isfinite(rv.peak):
            self.peak_span.location = rv.peak
        self._title_extra[self.peak_fig] = f": {_fmt(rv.peak)} GeV"
        for name, src in self.overlays.items():
            base = snap.baseline_h1.get(name)
            ours = rv.h1[name]
            if base is None or base.sum() <= 0 or ours.sum() <= 0:
                src.data.update(y=np.full(ours.size, np.nan))
                continue
            scaled = base * (ours.sum() / base.sum())
            src.data.update(y=np.where(scaled > 0, scaled, np.nan))
        sig = rv.signal
        cfg = self.config
        expected = (
            f"expected background {sig.expected:.1f} &plusmn; {sig.expected_error:.1f} "
            f"({html.escape(snap.reference_source)})"
            if math.isfinite(sig.expected)
            else "no expected background: no reference or run baseline with this view yet"
        )
        _set_text(
            self.signal_div,
            f"<div id='na64-signal' style='font-size:13px'>signal box E_ECAL &lt; {cfg.signal_ecal_max_gev:g} GeV, "
            f"E_HCAL &lt; {cfg.signal_hcal_max_gev:g} GeV: <b id='na64-signal-count'>{sig.observed:.0f}</b> events of "
            f"{sig.physics:.0f} physics triggers; {expected}</div>",
        )

    def _apply_maps(
        self,
        maps: list[tuple[Any, ColumnDataSource, LinearColorMapper]],
        values: list[np.ndarray],
        ids: np.ndarray,
    ) -> None:
        for (_, src, mapper), vals in zip(maps, values, strict=True):
            v = np.nan_to_num(vals[ids])
            src.data.update(value=v, label=[f"{x:.2g}" for x in v])
            mapper.high = max(float(v.max(initial=0)), 1e-6)

    def _apply_ecal(self, snap: Snapshot, rv: RangeView) -> None:
        e, p = np.asarray(detector.ECAL_IDS), np.asarray(detector.PRS_IDS)
        self._apply_maps([self.ecal_mean, self.ecal_occ], [rv.mean_energy, rv.occupancy], e)
        self._apply_maps([self.prs_mean, self.prs_occ], [rv.mean_energy, rv.occupancy], p)
        self._apply_spectrum(rv)

    def _apply_spectrum(self, rv: RangeView) -> None:
        ch = CHANNEL_NAMES.index(self.cell.value)
        edges = self.axes.spectrum_edges(ch)
        counts = rv.spectra[ch]
        self.spec_src.data = {"left": edges[:-1], "right": edges[1:], "top": counts}
        self.spec_fig.y_range.end = max(10.0, float(counts.max(initial=0)) * 2)
        self.spec_fig.title.text = f"Spectrum of {self.cell.value} (physics + beam triggers)"

    def _apply_hcal(self, snap: Snapshot, rv: RangeView) -> None:
        self._apply_maps(
            [self.hcal_mean, self.hcal_occ], [rv.mean_energy, rv.occupancy], np.asarray(detector.HCAL_IDS)
        )
        _set_hist(self.veto_src, rv.h1["veto_mip_phys"], self.veto_fig, log_y=True)
        _set_hist(self.srd_src, rv.h1["srd_sum_beam"])
        self.counter_src.data.update(
            {f"c{i}": rv.spectra[int(c)] for i, c in enumerate(detector.COUNTER_IDS)}
        )

    def _apply_rates(self, snap: Snapshot, rv: RangeView) -> None:
        if snap.arrival is not None:
            counts, edges = snap.arrival
            self.arrival_src.data = {"t": edges[:-1], "n": counts}
        t = rv.time_edges[:-1]
        self.ttimes_src.data = {"t": t, **{k: rv.times[i] for i, k in enumerate(TIME_ROWS)}}
        self._apply_history(snap)

    def _apply_waveforms(self, snap: Snapshot, rv: RangeView) -> None:
        ch = CHANNEL_NAMES.index(self.cell.value)
        if snap.waveform is not None:
            self.wave_src.data.update(adc=snap.waveform[ch])
            info = snap.waveform_info
            self.wave_info.text = (
                f"<b>{self.cell.value}</b>: event {info.get('event_id')} (run {info.get('run')} spill "
                f"{info.get('spill')}, trigger mask {info.get('trigger_mask', 0):#x}, "
                f"t = {info.get('t_ns', 0) / 1e9:.4f} s in spill)"
            )
        nan = np.full(detector.N_CHANNELS, np.nan)
        bm = snap.baseline_ped_mean if snap.baseline_ped_mean is not None else nan
        bn = snap.baseline_noise if snap.baseline_noise is not None else nan
        self.ped_src.data.update(
            mean=rv.ped_mean,
            noise=rv.ped_noise,
            base_mean=bm,
            base_noise=bn,
        )

    def _apply_checks(self, snap: Snapshot, rv: RangeView) -> None:
        _set_text(self.log_div, render.alarm_log(snap.alarm_log))
        if not self._changed("matrix", (snap.header["run"], snap.header["spills"])):
            return
        names = snap.check_names
        m = snap.check_matrix
        ys, xs = np.nonzero(m >= -1)
        states = [STATE_OF_VALUE[int(v)] for v in m[ys, xs]]
        self.matrix_src.data = {
            "x": xs.astype(float),
            "y": [names[i] for i in ys],
            "color": [
                STATE_COLORS[s] if int(v) >= 0 else "#eeeeee" for s, v in zip(states, m[ys, xs], strict=True)
            ],
            "state": states,
        }


def _set_text(div: Div, text: str) -> None:
    """Set a Div's HTML only when it changed (every change is drawn; no change costs nothing)."""
    if div.text != text:
        div.text = text


def _slug(title: str) -> str:
    """A file-name part from a plot title."""
    out = "".join(c.lower() if c.isalnum() else "_" for c in title.split(":")[0])
    return "_".join(p for p in out.split("_") if p)[:40] or "plot"


class SnapshotHub:
    """Holds the latest snapshot and tells every live session (on the server's event loop)."""

    def __init__(self, axes: Axes, check_names: list[str]) -> None:
        self.axes = axes
        self.check_names = check_names
        self.latest: Snapshot | None = None
        self._sessions: weakref.WeakSet[SessionView] = weakref.WeakSet()

    @property
    def n_sessions(self) -> int:
        return len(self._sessions)

    def publish(self, snap: Snapshot) -> None:
        self.latest = snap
        for session in list(self._sessions):
            try:
                session.notify()
            except Exception:  # a session being torn down
                log.debug("session notify failed", exc_info=True)

    def make_app(self, controller: Controller, config: DqmConfig) -> Callable[[Document], None]:
        """The Bokeh function-handler app for this hub."""

        def app(doc: Document) -> None:
            request = getattr(doc.session_context, "request", None)
            view = parse_view(request.arguments if request is not None else None)
            session = SessionView(doc, self, controller, config, view)
            self._sessions.add(session)  # weak: the document's callbacks keep the session alive

            def destroyed(_: Any) -> None:
                self._sessions.discard(session)

            doc.on_session_destroyed(destroyed)

        return app

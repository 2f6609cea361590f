"""HTML of the page's text panels: header, traffic lights, alarm tables, alarm history (pure).

Functions of snapshot data to strings; the session puts each into a Bokeh ``Div`` whose text it sets
whenever the string changes, so a panel always redraws when anything in it changes (a ``DataTable``
did not redraw when its row count stayed the same: an acknowledged alarm still read "raised").
Elements carry ids and ``data-*`` attributes (``#alarm-<name>``, ``#na64-daq``) for tests and tools.
Long texts are cut with an ellipsis and shown whole as a tooltip: a panel never grows over another.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

STATE_COLORS = {"OK": "#2ca02c", "WARN": "#ff9f1a", "ERROR": "#d62728", "UNKNOWN": "#9e9e9e"}
#: how the alarm states read on the page (ISA-18.2 names)
STATE_TEXT = {
    "normal": "normal",
    "unacknowledged": "UNACKNOWLEDGED",
    "acknowledged": "acknowledged",
    "rtn_unacknowledged": "cleared, not acknowledged",
    "shelved": "shelved",
    "suppressed": "suppressed",
}

_ELLIPSIS = "white-space:nowrap;overflow:hidden;text-overflow:ellipsis"


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any) -> str:
    """A number for people: integers as such, large ones in exponent form, '-' for missing."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(v):
        return "-"
    if abs(v) >= 1e6:
        return f"{v:.4e}"
    return f"{v:.0f}" if v == int(v) else f"{v:.3g}"


def when(t: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(float(t))) if t else ""


def age(seconds: Any) -> str:
    """'0.4 s', '12 s', '3 min', '-' for unknown."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"


def badge(severity: str, first: str = "", escalated: bool = False) -> str:
    """A severity label; ``WARN→ERROR`` for an alarm that escalated from ``first``."""
    color = STATE_COLORS.get(severity, STATE_COLORS["UNKNOWN"])
    text = f"{first}&rarr;{severity}" if escalated and first and first != severity else severity
    return (
        f"<span style='display:inline-block;min-width:46px;padding:0 4px;border-radius:3px;font-size:11px;"
        f"background:{color};color:white;font-weight:bold;text-align:center;white-space:nowrap'>{text}</span>"
    )


def header(h: Mapping[str, Any], reference: str) -> str:
    """The always-visible header: run, spill, DAQ state and ages, EOT, alarms. Wraps, never clips."""
    color = STATE_COLORS.get(h["worst"], STATE_COLORS["UNKNOWN"])
    mode = "offline (files)" if h["mode"] == "offline" else f"live {esc(h['source'])}"
    daq_style = "color:#d62728" if h.get("daq_stale") else ""
    unacked = h.get("unacknowledged", 0)
    parts = [
        "<b>NA64 DQM</b>",
        f"<span>Run <b id='na64-run'>{h['run']}</b></span>",
        f"<span>Spill <b id='na64-spill'>{h['spill']}</b></span>",
        f"<span>DAQ <b id='na64-daq' data-stale='{int(bool(h.get('daq_stale')))}' style='{daq_style}'>"
        f"{esc(h['daq_state'])}</b></span>",
        f"<span style='font-size:13px'>last status <b id='na64-status-age'>{age(h.get('status_age_s'))}</b>,"
        f" events <b>{age(h.get('event_age_s'))}</b>, spill <b>{age(h.get('spill_age_s'))}</b> ago</span>",
        f"<span>EOT run <b id='na64-eot'>{h['eot_run']}</b></span>",
        f"<span>EOT last spill <b>{fmt(h['eot_last_spill'])}</b></span>",
        f"<span>alarms <b id='na64-alarms' style='color:{color}'>{h['open_alarms']}</b>"
        + (f" (<b id='na64-unacked' style='color:#d62728'>{unacked} unacknowledged</b>)" if unacked else "")
        + (f", {h['shelved']} shelved" if h.get("shelved") else "")
        + (f", {h['suppressed']} suppressed" if h.get("suppressed") else "")
        + "</span>",
        f"<span style='font-size:12px;color:#666'>{mode} · ref: {esc(reference)}</span>",
    ]
    return (
        "<div style='display:flex;flex-wrap:wrap;column-gap:22px;row-gap:2px;align-items:center;"
        f"font-size:18px;padding:4px 10px;border-left:14px solid {color};background:#f5f5f5'>"
        + "".join(parts)
        + "</div>"
    )


def lights(checks: Sequence[Mapping[str, Any]], width: int) -> str:
    """One line per check: light, name, message (cut to the line; whole in the tooltip)."""
    rows = []
    for c in checks:
        state = c["state"]
        label = "not judged" if state == "UNKNOWN" else state
        rows.append(
            f"<tr id='check-{esc(c['name'])}' data-state='{state}'>"
            f"<td><span title='{label}' style='display:inline-block;width:13px;height:13px;border-radius:7px;"
            f"background:{STATE_COLORS.get(state, '#9e9e9e')}'></span></td>"
            f"<td style='{_ELLIPSIS};max-width:190px'><b>{esc(c['name'])}</b></td>"
            f"<td style='{_ELLIPSIS};max-width:{width - 230}px;color:#444' title='{esc(c['message'])}'>"
            f"{esc(c['message'])}</td></tr>"
        )
    return (
        f"<table class='na64-lights' style='font-size:12px;table-layout:fixed;width:{width}px;"
        "border-collapse:collapse'><colgroup><col style='width:20px'><col style='width:195px'><col></colgroup>"
        + "".join(rows)
        + "</table>"
    )


def alarm_table(alarms: Sequence[Mapping[str, Any]], width: int) -> str:
    """The open alarms (unacknowledged first), one line each; "no open alarm" when empty."""
    if not alarms:
        return "<div id='na64-alarm-table' data-rows='0' style='color:#2ca02c;font-size:14px'>no open alarm</div>"
    head = "".join(
        f"<th style='text-align:left;padding-right:6px'>{t}</th>"
        for t in ("severity", "alarm", "state", "raised", "run/spill", "message", "acknowledged")
    )
    rows = []
    for a in alarms:
        state = a["state"]
        unacked = state in ("unacknowledged", "rtn_unacknowledged")
        weight = "bold" if unacked else "normal"
        background = "#fde0dc" if state == "unacknowledged" else "#fff4d6" if unacked else "white"
        escalated = bool(a.get("escalated_at")) and bool(a.get("active"))
        acked = (
            f"{esc(a.get('acked_by') or '')} {when(a.get('acked_at'))}"
            if a.get("acknowledged") and a.get("acked_at")
            else ""
        )
        shown = a["severity"] if a.get("active") else a.get("peak_severity", "OK")
        rows.append(
            f"<tr id='alarm-{esc(a['name'])}' data-state='{state}' data-severity='{a['severity']}' "
            f"data-peak='{a.get('peak_severity', '')}' style='font-weight:{weight};background:{background}'>"
            f"<td style='padding-right:6px'>{badge(shown, a.get('first_severity', ''), escalated)}</td>"
            f"<td style='padding-right:6px;{_ELLIPSIS};max-width:150px' title='{esc(a['name'])}'>{esc(a['name'])}</td>"
            f"<td style='padding-right:6px'>{STATE_TEXT.get(state, state)}</td>"
            f"<td style='padding-right:6px'>{when(a.get('raised_at'))}</td>"
            f"<td style='padding-right:6px'>{a.get('run', '')}/{a.get('spill', '')}</td>"
            f"<td style='padding-right:6px;{_ELLIPSIS};max-width:{width - 630}px' title='{esc(a['message'])}'>{esc(a['message'])}</td>"
            f"<td style='padding-right:6px;font-weight:normal;font-size:11px;{_ELLIPSIS}'>{acked}</td></tr>"
        )
    return (
        f"<table id='na64-alarm-table' data-rows='{len(alarms)}' style='font-size:12px;width:{width}px;"
        "table-layout:fixed;border-collapse:collapse'><colgroup><col style='width:106px'><col style='width:150px'>"
        "<col style='width:150px'><col style='width:68px'><col style='width:58px'><col><col style='width:118px'>"
        f"</colgroup><tr>{head}</tr>" + "".join(rows) + "</table>"
    )


def set_aside(shelved: Sequence[Mapping[str, Any]], suppressed: Sequence[Mapping[str, Any]]) -> str:
    """Shelved (with reason, by and expiry) and suppressed alarms: out of the table, not out of sight."""
    parts = []
    for a in shelved:
        s = a.get("shelved") or {}
        parts.append(
            f"<span id='shelved-{esc(a['name'])}'><b>{esc(a['name'])}</b> shelved by {esc(s.get('by', ''))} "
            f"until {when(s.get('until'))}: {esc(s.get('reason', ''))}"
            + (" <b style='color:#d62728'>(active)</b>" if a.get("active") else "")
            + "</span>"
        )
    for a in suppressed:
        parts.append(f"<span><b>{esc(a['name'])}</b> suppressed ({esc(a.get('suppressed') or '')})</span>")
    return "<div style='font-size:12px;color:#555'>" + " · ".join(parts) + "</div>" if parts else ""


def alarm_history(name: str, events: Sequence[Mapping[str, Any]], limit: int = 25) -> str:
    """One alarm's history, newest first."""
    if not name:
        return ""
    rows = "".join(
        f"<tr><td>{when(e['time'])}</td><td>{e.get('run', '')}/{e.get('spill', '')}</td><td>{esc(e['event'])}</td>"
        f"<td>{badge(e['severity'])}</td><td>{esc(e.get('by', ''))}</td>"
        f"<td style='{_ELLIPSIS};max-width:260px' title='{esc(e['message'])}'>{esc(e['message'])}</td></tr>"
        for e in list(events)[::-1][:limit]
    )
    body = rows or "<tr><td colspan='6' style='color:#888'>no transition yet</td></tr>"
    return (
        f"<div id='na64-alarm-history' data-name='{esc(name)}' style='font-size:12px'><b>History of {esc(name)}</b>"
        "<table style='table-layout:fixed;border-collapse:collapse'>" + body + "</table></div>"
    )


def alarm_log(events: Sequence[Mapping[str, Any]]) -> str:
    """The latest transitions of all alarms, newest first."""
    rows = "".join(
        f"<tr><td>{when(e['time'])}</td><td>{e.get('run', '')}/{e.get('spill', '')}</td><td><b>{esc(e['name'])}</b></td>"
        f"<td>{esc(e['event'])}</td><td>{badge(e['severity'])}</td><td>{esc(e.get('by', ''))}</td>"
        f"<td style='{_ELLIPSIS};max-width:520px' title='{esc(e['message'])}'>{esc(e['message'])}</td></tr>"
        for e in events
    )
    return (
        "<div style='font-size:12px;max-height:320px;overflow-y:auto'><b>Alarm log (newest first)</b>"
        "<table style='border-collapse:collapse'>" + rows + "</table></div>"
    )

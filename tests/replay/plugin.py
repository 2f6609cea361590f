"""pytest fixtures for trigger unit tests against recorded spills and canned simulator scenarios.

Use them from any test directory by adding ``pytest_plugins = ["tests.replay.plugin"]`` to the root
``tests/conftest.py`` (``tests/replay/conftest.py`` already imports them). Fixtures:

``trigger_scenario(name, **kw)``
    the full primitive stream of one simulated spill of a canned scenario (``simulator.scenarios``:
    ``nominal``, ``dead_ecal_cell``, ``intensity_spike``, ``hadron_burst``), with per-particle truth;
    cached per arguments for the whole session.
``recorded_spills``
    spill files (``list[Path]``) recorded by the real chain: the directory in the environment variable
    ``NA64_RECORDED_SPILLS`` if set (your own data), else two small spills recorded once per session by
    ``na64 simulate`` -> ``na64 daq`` (real processes, real sockets).
``recorded_spill``
    the first of them, loaded for trigger studies (:class:`daq.retrigger.RecordedPrimitives`: primitives,
    recorded masks, ``.batch()``, ``.retrigger(**settings)``).

And the function they pair with, :func:`daq.retrigger.run_trigger` (the live trigger over a stream).
Example::

    def test_dead_beam_cell_floods_the_physics_trigger(trigger_scenario):
        dead = run_trigger(trigger_scenario("dead_ecal_cell").slices)
        ok = run_trigger(trigger_scenario("nominal").slices)
        assert dead.n("physics") > 20 * ok.n("physics")
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daq.files import list_spill_files
from daq.retrigger import RecordedPrimitives, load_recorded
from simulator.scenarios import ScenarioStream, scenario
from tests.conftest import free_port, na64_command, wait_daq_listening

#: small recorded spills: 0.2 s at 2e5 Hz, beam prescale 400 (~100 beam triggers), random every 5 ms
SIM_ARGS = ("--pace", "max", "--spills", "2", "--spill-length", "0.2", "--rate", "2e5", "--seed", "7")
DAQ_ARGS = ("--set", "trigger.beam_prescale=400", "--set", "trigger.random_period_ns=5000000")


def record_spills(
    data_dir: Path,
    sim_args: tuple[str, ...] = SIM_ARGS,
    daq_args: tuple[str, ...] = DAQ_ARGS,
    timeout_s: float = 120.0,
) -> list[Path]:
    """Record spills with the real chain: ``na64 daq --stop-after-run`` fed by ``na64 simulate``."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    daq_cmd = na64_command(
        "daq",
        "--endpoint",
        endpoint,
        "--publish",
        f"tcp://127.0.0.1:{free_port()}",
        "--data-dir",
        str(data_dir),
        "--stop-after-run",
        *daq_args,
    )
    procs: list[subprocess.Popen[bytes]] = []
    data_dir.mkdir(parents=True, exist_ok=True)
    daq_log = data_dir.parent / f"{data_dir.name}.daq.log"
    try:
        with daq_log.open("wb") as log:
            procs.append(subprocess.Popen(daq_cmd, stdout=log, stderr=subprocess.STDOUT))
        wait_daq_listening(procs[0], daq_log, timeout_s)
        procs.append(
            subprocess.Popen(
                na64_command("simulate", "--endpoint", endpoint, *sim_args),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        sim_out = procs[1].communicate(timeout=timeout_s)[0].decode()
        procs[0].wait(timeout=timeout_s)
        for p, out in ((procs[1], sim_out), (procs[0], daq_log.read_text())):
            if p.returncode != 0:
                raise RuntimeError(f"{p.args[3] if len(p.args) > 3 else p.args} failed:\n{out}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return list_spill_files(data_dir)


@pytest.fixture(scope="session")
def recorded_spills(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Spill files of the real chain (NA64_RECORDED_SPILLS, or two small spills recorded now)."""
    given = os.environ.get("NA64_RECORDED_SPILLS")
    if given:
        files = list_spill_files(given)
        if not files:
            pytest.fail(f"NA64_RECORDED_SPILLS={given} holds no spill files")
        return files
    return record_spills(tmp_path_factory.mktemp("recorded"))


@pytest.fixture(scope="session")
def recorded_spill(recorded_spills: list[Path]) -> RecordedPrimitives:
    return load_recorded(recorded_spills[0])


@pytest.fixture(scope="session")
def trigger_scenario() -> Iterator[Callable[..., ScenarioStream]]:
    """``trigger_scenario(name, n_slices=10, rate_hz=2e5, seed=1, faults=(), overrides=None)``, cached."""
    cache: dict[tuple[Any, ...], ScenarioStream] = {}

    def make(name: str, **kw: Any) -> ScenarioStream:
        key = (name, tuple(sorted((k, repr(v)) for k, v in kw.items())))
        if key not in cache:
            cache[key] = scenario(name, **kw)
        return cache[key]

    yield make

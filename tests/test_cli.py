"""The ``na64`` entry point: a subcommand imports only its own module (start-up time of every job, e.g.
the replay's), the top-level help and a mistyped command still see every subcommand."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from daq.cli import COMMAND_MODULES, command_in
from daq.demo import free_port

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
from daq.cli import build_parser
try:
    build_parser(sys.argv[1:]).parse_args(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m in {modules})))
"""


def cli_modules_loaded(*argv: str) -> list[str]:
    code = PROBE.format(modules=sorted(COMMAND_MODULES))
    p = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    return list(json.loads(p.stdout.strip().splitlines()[-1]))


def test_every_module_registers_exactly_the_commands_listed_for_it() -> None:
    for name, commands in COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub)
        assert tuple(sub.choices) == commands, name


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["replay", "a.h5"], "replay"),
        (["--log-level", "DEBUG", "dqm-reference", "--help"], "dqm-reference"),
        (["--log-level=ERROR", "daq"], "daq"),
        (["--help", "replay"], None),
        (["--version"], None),
        ([], None),
    ],
)
def test_the_command_is_found_after_the_top_level_options(argv: list[str], command: str | None) -> None:
    assert command_in(argv) == command


def test_a_subcommand_imports_only_its_own_module() -> None:
    assert cli_modules_loaded("replay", "--help") == ["simulator.replay_cli"]
    assert cli_modules_loaded("--log-level", "WARNING", "inspect", "--help") == ["daq.daq_cli"]


def test_the_top_level_help_and_a_mistyped_command_list_every_subcommand() -> None:
    assert cli_modules_loaded("--help") == sorted(COMMAND_MODULES)
    p = subprocess.run(
        [sys.executable, "-m", "daq", "replya"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2
    for commands in COMMAND_MODULES.values():
        for c in commands:
            assert f"'{c}'" in p.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["daq", "--data-dir", "{file}", "--endpoint", "tcp://127.0.0.1:{port}"],
            "exists and is not a directory",
        ),
        (["simulate", "--endpoint", "garbage", "--spills", "1"], "--endpoint garbage"),
        (["daq", "--calibration", "{dir}", "--data-dir", "{dir}/data"], "without calibration files"),
        (
            ["daq", "--calibration", "{dir}/cal", "--data-dir", "{dir}/data"],
            "ambiguous calibration for run 4: ",
        ),
        (["daq", "--calibration", "nominal", "--calibration", "{dir}/cal"], "cannot be combined"),
        (["simulate", "--truth", "{dir}", "--spills", "1"], "--truth {dir}: is a directory"),
        (["dqm-reference", "x.h5", "--out", "{dir}"], "--out {dir}: is a directory"),
        (["retrigger", "x.h5", "--json", "{dir}/no/such.json"], "does not exist"),
        (["dqm", "--source", "tcp://127.0.0.1:{port}", "--port", "{busy}"], "Address already in use"),
    ],
)
def test_a_user_mistake_is_one_line_and_exit_code_2(tmp_path: Path, argv: list[str], expected: str) -> None:
    import socket

    (tmp_path / "afile").write_text("")
    from calibration import constants as cc

    (tmp_path / "cal").mkdir()  # two different sets starting at run 4
    cc.save(cc.nominal().replace(version="a", run_min=4), tmp_path / "cal" / "a.json")
    cc.save(cc.nominal().replace(version="b", run_min=4, run_max=9), tmp_path / "cal" / "b.json")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {
            "file": str(tmp_path / "afile"),
            "dir": str(tmp_path),
            "port": str(free_port()),
            "busy": str(busy.getsockname()[1]),
        }
        args = [a.format(**values) for a in argv]
        p = subprocess.run(
            [sys.executable, "-m", "daq", "--log-level", "ERROR", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"na64 {args[0]}: error: ") and expected.format(**values) in last, p.stderr


def every_parser() -> dict[str, argparse.ArgumentParser]:
    """``na64`` and every (sub)command's parser, by command path."""
    from daq.cli import build_parser

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(path: str, parser: argparse.ArgumentParser) -> None:
        found[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(f"{path} {name}", sub)

    walk("na64", build_parser([]))
    return found


def test_no_help_shows_a_default_twice_or_a_meaningless_one() -> None:
    import re

    parsers = every_parser()
    assert {"na64 daq", "na64 simulate", "na64 calibrate gains", "na64 dqm"} <= set(parsers)
    for path, parser in parsers.items():
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: [])" not in text, path
        assert "(default: False)" not in text, path
        for option in re.split(r"\n  (?=-)", text):  # one option's help at a time
            assert len(re.findall(r"\bdefault\b", option, re.IGNORECASE)) <= 1, (path, option)


def test_detector_names_are_capitalised_in_every_help() -> None:
    import re

    for path, parser in every_parser().items():
        text = re.sub(r"--[\w-]+|\w+_\w+", "", parser.format_help())  # option and key names stay as they are
        bad = re.findall(r"\b(ecal|prs|hcal|veto|srd|Ecal|Hcal|Prs|Srd|Veto)\b", text)
        assert not bad, (path, bad)


def test_the_workers_option_reads_the_same_in_every_offline_command() -> None:
    parsers = every_parser()
    for path in ("na64 retrigger", "na64 dqm", "na64 dqm-reference", "na64 calibrate gains"):
        (action,) = [a for a in parsers[path]._actions if "--workers" in a.option_strings]
        assert action.metavar == "N" and action.default is None, path
        assert "0 = in this process" in (action.help or "") or "default: in this process" in (
            action.help or ""
        )


@pytest.mark.parametrize(
    ("argv", "level", "fmt"),
    [
        (["daq"], "INFO", "text"),
        (["--log-level", "ERROR", "daq"], "ERROR", "text"),
        (["daq", "--log-level", "DEBUG", "--log-format", "json"], "DEBUG", "json"),
        (["--log-level", "ERROR", "daq", "--log-level", "WARNING"], "WARNING", "text"),
        (["calibrate", "show", "x.json", "--log-level", "DEBUG"], "DEBUG", "text"),
    ],
)
def test_log_options_are_accepted_before_and_after_the_command(argv: list[str], level: str, fmt: str) -> None:
    from daq.cli import build_parser

    args = build_parser(argv).parse_args(argv)
    assert (args.log_level, args.log_format) == (level, fmt)


def test_log_lines_carry_the_date_and_zone_and_json_is_one_object_per_line() -> None:
    import io
    import logging
    import re

    from daq.logs import configure_logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for fmt in ("text", "json"):
            configure_logging("INFO", fmt)
            stream = io.StringIO()
            root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
            logging.getLogger("daq.test").info("dead time %d", 7)
            logging.getLogger("tornado.access").info("200 GET /dqm (127.0.0.1) 1.2ms")  # off by default
            (line,) = stream.getvalue().splitlines()
            stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
            if fmt == "text":
                assert re.fullmatch(stamp + r" INFO    daq\.test: dead time 7", line), line
            else:
                doc = json.loads(line)
                assert re.fullmatch(stamp, doc["time"]) and doc["message"] == "dead time 7"
                assert doc["level"] == "INFO" and doc["logger"] == "daq.test"
        configure_logging("DEBUG", "text")
        assert logging.getLogger("tornado.access").isEnabledFor(logging.INFO)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        logging.getLogger("tornado.access").setLevel(logging.NOTSET)

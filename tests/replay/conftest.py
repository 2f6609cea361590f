"""Fixtures of the replay tests: the trigger-test plugin (tests/replay/plugin.py)."""

from tests.replay.plugin import recorded_spill, recorded_spills, trigger_scenario

__all__ = ["recorded_spill", "recorded_spills", "trigger_scenario"]

"""simulator package of na64daq."""

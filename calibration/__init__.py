"""calibration package of na64daq."""

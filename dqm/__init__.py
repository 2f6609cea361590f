"""dqm package of na64daq."""

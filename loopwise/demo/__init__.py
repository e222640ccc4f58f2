"""``make demo``: services, workers and simulated traffic with a known truth."""

"""``loopwise`` — the operators' command line, one module per command group."""

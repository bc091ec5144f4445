"""`vigil` sub-commands, one module per area."""

"""CLI commands, one module per area; see `digitlab.cli`."""

"""The plain ``nml`` subcommands, one module per group. Modules import nothing heavy at module level:
they are read for ``--help``."""

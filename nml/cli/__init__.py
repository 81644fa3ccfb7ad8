"""The ``nml`` command: ``main`` (the entry point), ``lightning`` (LightningCLI) and ``commands``."""

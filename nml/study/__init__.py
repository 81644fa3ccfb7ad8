"""``nml study``: the paper's experiment end to end (pre-train -> export -> features -> tune -> test
-> spectra over a grid of objective x noise rate x seed), resumable, and ``nml report``."""

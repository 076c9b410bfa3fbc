"""Making subsets: threshold sweeps, ``select`` with the reason of every drop, subset files."""

"""Limits that commands show as defaults, kept apart from the modules that enforce them (so the
command line reads them without loading Pillow)."""

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit, enforced explicitly

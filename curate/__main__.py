"""``python -m curate``: the ``filter-pool`` command, where its script is not installed."""

from curate.launch import main

main()

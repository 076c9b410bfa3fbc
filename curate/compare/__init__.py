"""Compare training sets by fitted scaling curves: ``filter-pool compare``."""

"""``filter-pool evaluate``: train fresh small CLIPs on a subset and measure them."""

"""filter-pool: curate web image-text pools with Data Filtering Networks."""

__version__ = "0.1.0"

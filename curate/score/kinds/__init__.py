"""Packaged scorer kinds: each module registers one with ``@register_scorer``."""

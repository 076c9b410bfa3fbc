"""Learned heads on embeddings: small models (linear, MLP, the LAION aesthetic predictor's
layout) that turn a sample's image (or image+text) embedding into a score. ``model`` builds and
loads them without unpickling; ``train`` fits one from a labels table; the ``head`` scorer kind
(``curate/score/kinds/head.py``) writes their scores as a scorer's table."""

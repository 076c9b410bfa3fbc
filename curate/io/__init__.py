"""Readers and writers: webdataset tars, img2dataset and DataComp formats, download and
serving, the image codec and sample statuses, uids, the run workspace and its table schemas.

Nothing here imports a stage or a generator."""

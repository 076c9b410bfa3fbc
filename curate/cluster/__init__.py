"""DataComp's image-based clustering filter: caption pre-filter, k-means centroids of the
pool's image embeddings, targets nearest a reference set, a derived table per sample.

    from curate.cluster.stage import ClusterConfig, cluster_run
    cluster_run(ClusterConfig(run, clusters=1000, reference=(Path("in1k.npy"),)))

Kept light (no imports): the launcher imports every stage package's ``__init__``.
"""

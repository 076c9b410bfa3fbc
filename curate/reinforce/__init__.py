"""Dataset reinforcement (MobileCLIP): stored augmentations, teacher embeddings, captions."""

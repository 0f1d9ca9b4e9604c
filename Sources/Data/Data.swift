// Triplet datasets, the latent cache and world-size-independent sharding.

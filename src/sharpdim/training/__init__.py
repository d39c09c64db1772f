"""Training (the only loop-aware code): models, offline datasets, training loop, EoS monitor."""

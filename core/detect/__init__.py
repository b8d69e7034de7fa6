"""Copy detection: the contrastive encoder, similarity search, calibrated thresholds and metrics."""

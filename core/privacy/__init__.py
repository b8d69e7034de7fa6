"""Privacy beyond copies: membership inference through a checkpoint, and distribution-level copying tests."""

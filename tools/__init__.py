"""Tools built on the engine: the embedded demo recipe and planted-copy benchmarks (never imported by core)."""

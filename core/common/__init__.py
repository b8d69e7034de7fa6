"""Foundation: errors, provenance (hashes, versions, atomic writes), config base, progress events, tables."""

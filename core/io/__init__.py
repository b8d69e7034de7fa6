"""Files in and out: discovery, readers, preprocessing, augmentation, real sample scans, display arithmetic."""

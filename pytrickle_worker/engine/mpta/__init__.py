"""MPTA archives: manifest spec, safe extraction and fetching/caching."""

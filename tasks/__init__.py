"""Restoration stages and the per-item steps of an archive run."""

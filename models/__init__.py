"""Named model factories."""

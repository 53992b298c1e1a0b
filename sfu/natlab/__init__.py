"""natlab."""

"""sharpdim.runner."""

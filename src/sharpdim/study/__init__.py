"""sharpdim.study."""

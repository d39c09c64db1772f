"""CLI sub-commands, one module per command group; :mod:`sharpdim.cli` assembles them."""

"""Short examples of services built on the kit's clients."""

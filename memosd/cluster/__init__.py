"""The daemons that share one vault: membership, and the bus that carries news between them."""

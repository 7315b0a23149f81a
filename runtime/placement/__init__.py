"""Where an address runs: the locator, and calls relayed to the owner."""

"""Tokens: the encrypted store, the self-refreshing manager, and the interface sessions use."""

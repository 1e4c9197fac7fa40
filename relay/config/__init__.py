"""Configuration: the typed model (`relay.config.model`) and the YAML loader (`relay.config.loader`)."""

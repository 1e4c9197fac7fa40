"""Configuration, phase 1: the typed model and its YAML keys (`model`), how keys are declared and
read (`schema`, `parsers`), safe file input (`sources`, `expand`) and the structure pass
(`structure`). Phase 2 and the entry points `load_config`/`parse_config` are in `relay.configuration`."""

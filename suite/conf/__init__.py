"""Hydra config groups (a package so that configs can be composed by module)."""

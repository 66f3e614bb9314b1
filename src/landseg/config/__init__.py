"""The configuration: pydantic models of every section, loading, overrides and the
rules for continuing a run under a changed config."""

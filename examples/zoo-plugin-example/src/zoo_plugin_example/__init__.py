"""An example zoo plugin, installed and run by zoo's tests (docs/writing-a-plugin.md)."""

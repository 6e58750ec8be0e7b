"""An example zoo merge method, installed and run by zoo's tests (docs/writing-a-plugin.md)."""

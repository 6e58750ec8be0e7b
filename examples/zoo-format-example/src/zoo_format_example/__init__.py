"""An example zoo plugin, installed and run by zoo's tests: torchvision's classifiers as a member format
(docs/writing-a-plugin.md, "A member format")."""

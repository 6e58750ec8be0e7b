"""zoo's built-in strategies, each registered through the entry-point group ``zoo`` like any outside plugin."""

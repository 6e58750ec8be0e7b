"""Member formats: timm's layout and transformers' image classifiers, and exact conversion between them."""

"""PEFT's names for an adapter's files and tensors, shared by reading adapters (``peft_adapter``) and writing
one (``adapter_output``)."""

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's name of the wrapped model in the adapter's tensor names

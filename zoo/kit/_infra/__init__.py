"""The kit's private infrastructure: what zoo's API, CLI and the kit itself run on, and no plugin imports.

- ``safetensors_reader``: one safetensors file read tensor by tensor, hashed on the way;
- ``safetensors_writer``: a safetensors model written tensor by tensor into files laid out in advance;
- ``output_folder``: an output folder written atomically (a temporary folder renamed into place);
- ``prefetch``: tasks run on background threads, a bounded number ahead;
- ``cache``: zoo's cache folder ($ZOO_CACHE) and an atomic write into it;
- ``hash_cache``: known sha256 digests of member files, by what ``stat`` says;
- ``timm_names``: the model and classifier names the installed timm knows;
- ``scrub_paths``: what zoo publishes names no place on the machine it was made on;
- ``hub_client``: the Hugging Face Hub through huggingface_hub, one clear error per failure;
- ``progress``: rich bars in the CLI, silence in the API;
- ``distributed``: torch.distributed as torchrun starts it;
- ``exports``: the lazy ``NAMES`` tables of the kit's public groups.

A name here reaches plugins only where a public group's ``NAMES`` table lists it (``tests/test_architecture.py``).
"""

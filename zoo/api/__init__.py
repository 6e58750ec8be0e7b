"""The Python API: what the CLI calls and users import as ``zoo.combine``, ``zoo.select`` …

- ``combine.py``: resolve members, run a strategy, save the result (``combine``, ``save``, ``load_member(s)``)
- ``finetune.py``, ``evaluate.py``, ``load.py``, ``push.py``: one command each
- ``selection/``: ``zoo select`` (ranking, validation, the output folder)
- ``discover.py``: ``zoo discover`` (the Hub's models derived from a base, which fit it, a zoo file of them)
- ``card.py``: the model card of an output
"""

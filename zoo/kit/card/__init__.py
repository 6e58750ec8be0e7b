"""The model card: sections a strategy fills (``Section``, ``table``) and figures drawn headless
(``pyplot``, ``bars``, ``greedy_path``, ``robustness_curve``, ``sweep_curve``, ``training_curves``,
``merging_coefficients``).
"""

from zoo.kit._infra.exports import lazy

#: name → the module that holds it
NAMES = {
    "Section": "zoo.kit.card.sections",
    "table": "zoo.kit.card.sections",
    "pyplot": "zoo.kit.card.figures",
    "bars": "zoo.kit.card.figures",
    "greedy_path": "zoo.kit.card.figures",
    "robustness_curve": "zoo.kit.card.figures",
    "sweep_curve": "zoo.kit.card.figures",
    "training_curves": "zoo.kit.card.figures",
    "merging_coefficients": "zoo.kit.card.figures",
}
__all__ = sorted(NAMES)
__getattr__ = lazy(__name__, NAMES)

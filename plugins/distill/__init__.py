"""Knowledge distillation of any teachers into one student: MEAL V2 (default) or Hinton's KD.

``strategy.py`` is the strategy and its options, ``losses.py`` the targets and losses, ``loop.py`` the
training run (cached or live teacher outputs, the discriminator, evaluation).
"""

import zoo



@zoo.hookimpl
def zoo_strategies():
    from zoo.plugins.distill.strategy import Distill

    return [Distill]

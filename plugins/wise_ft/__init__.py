"""WiSE-FT (robust fine-tuning by weight interpolation) and BANG (WiSE-FT of a calibrated fine-tune).

BANG is WiSE-FT whose fine-tuned end is made first: both strategies share one sweep (``sweep.py``),
and BANG's options extend WiSE-FT's.
"""

import zoo



@zoo.hookimpl
def zoo_strategies():
    from zoo.plugins.wise_ft.bang import Bang
    from zoo.plugins.wise_ft.sweep import WiseFT

    return [WiseFT, Bang]

"""Task-vector merges: task arithmetic, TIES, DARE, Model Stock, SLERP, Fisher, RegMean, MWA, TSV-M, Iso-C,
Iso-CTS, model breadcrumbs, DELLA and AdaMerging.

Each method is a per-tensor function on the kit's merge contract (``zoo.merge_method``): zoo streams
the members (and ``--base``) one chunk at a time, so memory is one output model plus bounded chunks,
whatever the number of members (AdaMerging, which trains its coefficients, holds the base and the task
vectors instead). Definitions, defaults and the checks the tests make are in
docs/algorithms.md ("Task-vector merges").
"""

import zoo


@zoo.hookimpl
def zoo_strategies():
    # imported here, not at the top: zoo imports every plugin for `zoo --help` (they import torch only when run)
    from . import (adamerging, arithmetic, breadcrumbs, dare, della, fisher, isotropic, model_stock, mwa, regmean,
                   slerp, ties, tsv)

    return [arithmetic.task_arithmetic, ties.ties, dare.dare, model_stock.model_stock, slerp.slerp,
            fisher.fisher, regmean.regmean, mwa.mwa, tsv.tsv, isotropic.iso_c, isotropic.iso_cts,
            breadcrumbs.breadcrumbs, della.della, adamerging.AdaMerging]

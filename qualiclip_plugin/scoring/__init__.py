"""The scoring operator and what one scoring run does: the App form (:mod:`.forms`,
:mod:`.operator`), the run itself (:mod:`.runner`), field writing (:mod:`.writing`), field
claims (:mod:`.claims`), run plans for delegated and sharded runs (:mod:`.plans`, :mod:`.shards`).
"""

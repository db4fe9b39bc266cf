"""The toy domain's training stages, one module each (`deltaedit.toy.train` runs them in order).

Every stage is a `Stage` (`common.py`): its name, the files it writes into the output folder
(all there and no --force: the stage is skipped), the `ToyBudget` fields it reads, and `run`,
which trains from a `StageContext` and returns its entries for train_log.json.
"""

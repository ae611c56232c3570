"""The per-run signal columns a subset store holds beside masks and correctness: their names, dtypes and the
value of an example a model did not train on. Training records them (memlib.train.signals); analysis reads them.
"""

SIGNAL_NOT_SEEN = 255  # uint8 value of an example the model did not train on
SIGNAL_COUNTS = ("correct_epochs", "forgetting", "learned_epoch")
SIGNAL_MEANS = ("aum", "margin", "loss", "el2n")
SIGNAL_COLUMNS = {**{k: "uint8" for k in SIGNAL_COUNTS}, **{k: "float16" for k in SIGNAL_MEANS}}

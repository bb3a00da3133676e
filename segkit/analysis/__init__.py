"""``python -m segkit.analysis sizes ...``: the size-distribution comparison command (``__main__``); the
library code is in :mod:`segkit.evaluation.objects`."""

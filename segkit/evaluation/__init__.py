"""Evaluation: pooled and per-image scores from confusion matrices (``metrics``), object tables, matching and
size statistics (``objects``, ``object_report``), the ISBI 2012 EM scores (``em``) and report figures
(``figures``). Import from the submodules."""

"""Object-level analysis of segmentations: instances, object tables, matching and size statistics."""

from segkit.analysis.objects import (
    OBJECT_COLUMNS,
    UM_COLUMNS,
    compare_sizes,
    instances,
    match_objects,
    object_table,
    size_distribution_test,
    size_histogram_png,
    write_objects_csv,
)

__all__ = [
    "OBJECT_COLUMNS",
    "UM_COLUMNS",
    "compare_sizes",
    "instances",
    "match_objects",
    "object_table",
    "size_distribution_test",
    "size_histogram_png",
    "write_objects_csv",
]

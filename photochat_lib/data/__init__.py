"""Data: one representation for PhotoChat, DialogCC and the toy world; samples, stats and batches.

Light imports only (no torch): ``collate`` and ``images`` are imported from their modules.
"""
from photochat_lib.data.dialogcc import read_dialogcc
from photochat_lib.data.photochat import read_photochat
from photochat_lib.data.samples import Sample, make_samples
from photochat_lib.data.schema import DataError, Dialogue, Photo, ReadReport, Turn
from photochat_lib.data.stats import dialogue_stats, format_table

__all__ = ["DataError", "Dialogue", "Photo", "ReadReport", "Sample", "Turn", "dialogue_stats",
           "format_table", "make_samples", "read_dialogcc", "read_photochat"]

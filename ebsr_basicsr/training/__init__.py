"""The training side (torch + basicsr): BasicSR glue, distillation, complexity counting,
the exporter and the train/test entry points.

Importing this package imports nothing; its modules import torch (and basicsr) themselves.
"""

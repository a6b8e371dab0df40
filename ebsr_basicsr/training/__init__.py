"""The training side (torch + basicsr): BasicSR glue (registration, the BinarySRModel, the
entry points' checks and fixes), distillation, complexity counting,
checkpoint reading, the exporter and the train/test entry points.

Nothing here imports Numba or the kernels: the exporter writes runtime model files with the
NumPy-only ``ebsr_basicsr.packing`` and ``ebsr_basicsr.runtime.format``. Importing this
package imports nothing; its modules import torch (and basicsr) themselves.
"""

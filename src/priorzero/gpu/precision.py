"""The precision of float32 matrix products on a GPU, for the whole process (`gpu.tf32`).

The world model, the search that runs it and the text encoder compute in float32 (the language model in bf16).
By PyTorch's default their matrix products run in full float32 on CUDA cores (cuBLAS's `sgemm` kernels); with
TensorFloat-32 they run on the tensor cores, inputs rounded to a 10-bit mantissa and sums kept in float32, which
is what PyTorch's matmul precision 'high' means. CPUs are unaffected.
"""

from __future__ import annotations

import torch


def apply_matmul_precision(tf32: bool) -> None:
    """float32 matrix products on TensorFloat-32 tensor cores (`tf32`) or in full float32, in this process."""
    torch.backends.cuda.matmul.allow_tf32 = tf32

"""Store mostly-zero weight matrices as ONNX sparse initializers: smaller files at high sparsity only.

Findings (onnx 1.23, onnxruntime 1.32; random BERT, hidden 384, 6 layers, FFN 1536, half of every
encoder Linear weight zeroed by magnitude, O2 graph, batch 8 x 64, 1 thread):

- onnxruntime loads sparse initializers correctly (logits bit-identical) by densifying them at load:
  no sparse kernels, so latency is unchanged (123 ms dense, 123 ms sparse) and RAM goes *up*
  (resident after load 106 MB dense vs 190 MB sparse at 50%, 141 MB at 90%), since the sparse
  proto and the dense copy coexist.
- The ONNX checker requires int64 indices, i.e. 12 bytes per kept fp32 weight against 4 dense, so a
  matrix shrinks only above 2/3 sparsity. At 50% the file grew 43.4 MB -> 64.6 MB (int32 indices,
  which onnxruntime accepts but the checker rejects, break even: 43.4 MB). At 90%: 43.4 -> 13.7 MB.
- gzip of the dense 50%-zero file gives 23.5 MB, less than any sparse encoding; at 90% gzip gives
  6.3 MB dense vs 6.2 MB sparse. Compressing the artefact for transport beats sparse initializers.

So this is an opt-in disk-size option (export --sparse-storage) for > 2/3-sparse matrices (int8: > 8/9),
off by default; the speed of a pruned model comes from the structure baking removes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

_INDEX_BYTES = 8  # int64 linearised indices, the only index type the ONNX checker accepts


def _as_sparse(array: np.ndarray, name: str) -> onnx.SparseTensorProto:
    """Values and int64 linear indices of the non-zeros of `array`."""
    flat = array.ravel()
    nonzero = np.flatnonzero(flat)
    values = numpy_helper.from_array(flat[nonzero], name)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(nonzero.astype(np.int64)), array.shape)


def _worth_converting(array: np.ndarray, min_sparsity: float) -> bool:
    """Sparse enough, and its sparse encoding is smaller than the dense one."""
    if array.ndim == 0 or array.size == 0:
        return False
    nonzero = np.count_nonzero(array)
    sparsity = 1 - nonzero / array.size
    return sparsity >= min_sparsity and nonzero * (array.itemsize + _INDEX_BYTES) < array.nbytes


def sparsify_initializers(path: str | Path, out_path: str | Path, min_sparsity: float = 0.5) -> dict[str, int]:
    """Rewrite initializers with >= `min_sparsity` zeros as sparse ones where that shrinks them."""
    model = onnx.load(str(path))
    dense, converted = [], 0
    for initializer in model.graph.initializer:
        array = numpy_helper.to_array(initializer)
        if _worth_converting(array, min_sparsity):
            model.graph.sparse_initializer.append(_as_sparse(array, initializer.name))
            converted += 1
        else:
            dense.append(initializer)
    del model.graph.initializer[:]
    model.graph.initializer.extend(dense)
    onnx.save(model, str(out_path))
    return {"bytes_before": os.path.getsize(path), "bytes_after": os.path.getsize(out_path),
            "tensors_converted": converted}

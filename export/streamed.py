"""Export a model larger than memory: the graph traced with fake weights, the weights written
as external data one tensor at a time.

A 7B model in fp32 (27 GB) cannot be traced the usual way on a 24 GiB machine: ``torch.onnx``
needs every parameter as a tensor, its optimizer folds each ``W.T`` into a new copy, and the
protobuf holds them all before anything is written. Here instead:

1. every parameter and buffer of the export module is swapped for a *fake* tensor (shape and
   dtype, no storage) while ``torch.onnx`` (dynamo) traces, unoptimized;
2. each initializer of the traced graph gets a lazy value: a block's weight is read from the
   model's checkpoint (memory-mapped safetensors) when it is written, a tensor outside the blocks
   (embeddings, norms, RoPE tables) is the one in memory. The ``Transpose`` of a Linear weight
   becomes an initializer ``<name>.T`` whose value is the transposed weight, as the in-memory
   export stores it (what DeepSparse's sparse kernels and ours read);
3. the optimizer runs (it folds only small constants, so no weight is evaluated);
4. :class:`ExternalData` writes each large initializer into ``model.onnx.data`` (64 KiB-aligned,
   so runtimes can map it), computes its report entry from the same array, and drops it.

Peak memory: what the skeleton holds outside the blocks plus one weight and its transpose.
Flavours of one artifact share one data file: the prefill graph's ``model.onnx.data`` is a hard
link of the decode graph's (a copy where the filesystem has no links), since their weights are
the same tensors under the same names.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import onnx_ir as ir
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from export.graphs import exported_modules, graph_spec, make_deepsparse_compatible
from export.metadata import write_metadata
from export.weights import TRANSPOSED_SUFFIX, weight_entry
from pipeline.errors import SparseDeployError
from pipeline.progress import heartbeat, progress
from pipeline.shards import Checkpoint

log = logging.getLogger(__name__)

ALIGNMENT = 1 << 16  # offsets in the data file: a multiple of the allocation granularity, so a runtime can mmap them
INLINE_BELOW = 1024  # bytes: smaller initializers stay inside the graph file (as the in-memory export does)
_WRAPPER = "model."  # the export modules (CausalLMDecode, ...) hold the model as ``.model``


@contextlib.contextmanager
def fake_weights(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Every parameter and buffer of ``module`` swapped for a fake tensor of its shape and dtype
    (a tied tensor stays tied). Yields the originals by qualified name; restores them on exit."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes: dict[int, torch.Tensor] = {}
    swapped: list[tuple[dict[str, Any], str, Any]] = []
    originals: dict[str, torch.Tensor] = {}

    def fake_of(tensor: torch.Tensor, parameter: bool) -> torch.Tensor:
        if id(tensor) not in fakes:
            with mode:
                fake = torch.empty(tensor.shape, dtype=tensor.dtype)
            fakes[id(tensor)] = nn.Parameter(fake, requires_grad=False) if parameter else fake
        return fakes[id(tensor)]

    try:
        for prefix, sub in module.named_modules(remove_duplicate=False):
            for table, parameter in ((sub._parameters, True), (sub._buffers, False)):
                for name, tensor in list(table.items()):
                    if tensor is None:
                        continue
                    originals[f"{prefix}.{name}" if prefix else name] = tensor
                    swapped.append((table, name, tensor))
                    table[name] = fake_of(tensor, parameter)
        yield originals
    finally:
        for table, name, tensor in reversed(swapped):
            table[name] = tensor


def display_name(initializer: str) -> str:
    """The name an in-memory export gives a weight: the parameter's name without its model prefix
    (``layers.3.mlp.down_proj.weight``)."""
    return initializer.removeprefix(_WRAPPER).removeprefix(_WRAPPER)


def _lazy(shape: tuple[int, ...], dtype: torch.dtype | ir.DataType, read: Callable[[], torch.Tensor],
          name: str) -> ir.LazyTensor:
    """A value computed only when written (and not kept: ``cache=False``)."""
    if isinstance(dtype, torch.dtype):
        dtype = ir.DataType.from_numpy(torch.empty(0, dtype=dtype).numpy().dtype)
    return ir.LazyTensor(lambda: ir.Tensor(np.ascontiguousarray(read().detach().numpy())), dtype=dtype,
                         shape=ir.Shape(shape), name=name)


def _source(name: str, original: torch.Tensor, checkpoint: Checkpoint) -> Callable[[], torch.Tensor]:
    """How to read the tensor the trace saw as ``name``: a block's weight (on the meta device in the
    skeleton) from the checkpoint, anything else from memory."""
    if original.is_meta:
        return lambda: checkpoint.tensor(name.removeprefix(_WRAPPER))
    return lambda: original


def _fold_weight_transposes(graph: ir.Graph, sources: dict[str, Callable[[], torch.Tensor]],
                            names: dict[str, str]) -> dict[str, str]:
    """``Transpose(W)`` of a 2-D initializer used nowhere else -> an initializer ``W.T`` (read
    transposed when written), as the optimizer folds it when the values are in memory. ``names``:
    initializer -> the parameter's canonical name. Returns folded initializer -> the one it replaced."""
    folded: dict[str, str] = {}
    for node in list(graph):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        weight = node.inputs[0]
        if weight is None or weight.name not in sources or len(weight.shape or ()) != 2 or len(weight.uses()) != 1:
            continue
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) != [1, 0]:
            continue
        read = sources[weight.name]
        shape = tuple(reversed(tuple(weight.shape)))
        name = display_name(names[weight.name]) + TRANSPOSED_SUFFIX
        lazy = _lazy(shape, weight.const_value.dtype, lambda read=read: read().t().contiguous(), name)
        value = ir.Value(name=name, shape=ir.Shape(shape), type=weight.type, const_value=lazy)
        graph.register_initializer(value)
        ir.convenience.replace_all_uses_with(node.outputs[0], value)
        graph.remove(node, safe=True)
        graph.initializers.pop(weight.name)
        folded[name] = weight.name
    return folded


def attach_weights(model: ir.Model, originals: dict[str, torch.Tensor], checkpoint: Checkpoint) -> dict[str, str]:
    """Give every initializer of a graph traced under :func:`fake_weights` a lazy value (see the
    module docstring) and the in-memory export's names for the weights. Returns initializer ->
    parameter name (in the model) for the 2-D parameters, the weights the report describes."""
    graph = model.graph
    first: dict[int, str] = {}  # a tied tensor goes by its first name, as named_parameters() gives it
    for name, tensor in originals.items():
        first.setdefault(id(tensor), name)
    names: dict[str, str] = {}
    sources: dict[str, Callable[[], torch.Tensor]] = {}
    for name, value in graph.initializers.items():
        original = originals.get(name)
        if original is None:
            raise SparseDeployError(f"the traced graph has an initializer {name} that is no tensor of the model")
        names[name] = first[id(original)]
        sources[name] = _source(name, original, checkpoint)
        value.const_value = _lazy(tuple(original.shape), original.dtype, sources[name], name)
    weights = {new: names[old].removeprefix(_WRAPPER)
               for new, old in _fold_weight_transposes(graph, sources, names).items()}
    for name, value in list(graph.initializers.items()):
        original = originals.get(name)
        if isinstance(original, nn.Parameter) and original.dim() == 2:
            graph.initializers.pop(name)
            value.name = display_name(names[name])
            graph.register_initializer(value)
            weights[value.name] = names[name].removeprefix(_WRAPPER)
    return weights


class ExternalData:
    """One ``.data`` file that the graphs of an artifact share: each tensor written once, under its
    initializer name, at an aligned offset."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offsets: dict[str, tuple[int, int]] = {}
        self.size = 0
        # report entries of the weights written: a second graph naming them needn't read them again
        self.entries: dict[str, dict[str, Any]] = {}

    def add(self, name: str, array: np.ndarray) -> tuple[int, int]:
        if name in self.offsets:
            return self.offsets[name]
        offset = -(-self.size // ALIGNMENT) * ALIGNMENT
        data = np.ascontiguousarray(array).data
        try:
            self._write(offset, data)
        except OSError as exc:
            raise SparseDeployError(f"cannot write {self.path.name} ({exc.strerror or exc}, "
                                    f"{self.size / 1e9:.2f} GB written): the export is abandoned, "
                                    "nothing was written to the output") from None
        self.offsets[name] = (offset, data.nbytes)
        self.size = offset + data.nbytes
        return self.offsets[name]

    def _write(self, offset: int, data: memoryview) -> None:
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.seek(offset)
            f.write(data)

    def share_with(self, directory: Path) -> None:
        """The same file under ``directory`` (a graph there names it relative to itself)."""
        target = directory / self.path.name
        if directory == self.path.parent or target.exists():
            return
        try:
            os.link(self.path, target)
        except OSError:
            log.warning("no hard links on %s: copying %s (%.1f GB)", directory, self.path.name, self.size / 1e9)
            shutil.copyfile(self.path, target)


def _needed_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None and v.const_value.nbytes >= INLINE_BELOW)


def check_room(model: ir.Model, store: ExternalData) -> None:
    """Fail before writing when the data file cannot fit on its filesystem."""
    needed = _needed_bytes(model) - sum(length for _, length in store.offsets.values())
    free = shutil.disk_usage(store.path.parent).free
    if needed > free:
        raise SparseDeployError(f"the export needs {needed / 1e9:.1f} GB on {store.path.parent} and "
                                f"{free / 1e9:.1f} GB are free")


def externalize(model: ir.Model, store: ExternalData, directory: Path, weights: dict[str, str],
                roles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Write each large initializer into ``store`` (one at a time), point the graph at it, and
    return the weights' report entries, computed from the arrays as they pass."""
    values = list(model.graph.initializers.values())
    for value in progress(values, desc=f"writing the weights of {directory.name}", unit="tensor"):
        tensor = value.const_value
        if tensor is None:
            continue
        written = value.name in store.offsets
        array = None if written else tensor.numpy()
        if value.name in weights and not written:
            store.entries[value.name] = weight_entry(value.name, array, roles.get(weights[value.name]))
        if tensor.nbytes < INLINE_BELOW:
            value.const_value = ir.Tensor(array if array is not None else tensor.numpy(), name=value.name)
            continue
        offset, length = store.offsets[value.name] if written else store.add(value.name, array)
        value.const_value = ir.ExternalTensor(store.path.name, offset, length, tensor.dtype, shape=tensor.shape,
                                              name=value.name, base_dir=directory)
    return {name: store.entries[name] for name in weights}


def trace_without_weights(model: nn.Module, flavour: str) -> tuple[ir.Model, dict[str, Any], dict[str, torch.Tensor]]:
    """``flavour``'s graph traced with fake weights, unoptimized; its I/O; the module's real tensors."""
    with exported_modules(model, flavour) as rope_table:
        spec = graph_spec(model, flavour)
        with fake_weights(spec.module) as originals, heartbeat(f"tracing the {flavour} graph (fake weights)"):
            program = spec.export(optimize=False)
    return program, spec.io(rope_table), originals


def write_streamed_graph(model: nn.Module, checkpoint: Checkpoint, flavour: str, dest: Path,
                         metadata: dict[str, Any], store: ExternalData,
                         roles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One flavour of a streamed model as ``dest`` with its weights in ``store``; the same result
    as the in-memory ``_write_graph`` (I/O, weight report), without the model whole in memory."""
    program, io, originals = trace_without_weights(model, flavour)
    weights = attach_weights(program.model, originals, checkpoint)
    with heartbeat(f"optimizing the {flavour} graph"):
        program.optimize()
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_room(program.model, store)
    report = externalize(program.model, store, dest.parent, weights, roles)
    store.share_with(dest.parent)
    ir.save(program.model, dest)
    proto = onnx.load(str(dest), load_external_data=False)
    make_deepsparse_compatible(proto)
    write_metadata(proto, {**metadata, "flavour": {"name": flavour, **io}, "weights": report})
    try:
        onnx.save_model(proto, str(dest))
    except OSError as exc:
        raise SparseDeployError(f"cannot write {dest.name} ({exc.strerror or exc})") from None
    return {"io": io, "weights": report, "template": None}

"""Runs one of PyTorch's ONNX exporters on a module: TorchScript (`torch.onnx.export(dynamo=False)`, the default) or
dynamo (`dynamo=True`, torch >= 2.5). Weights go to external data where the exporter writes it (dynamo always;
TorchScript above 2 GB), so a protobuf with inline weights above 2 GB is never built."""
import contextlib
import inspect
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

TORCHSCRIPT_OPSET = 17


def has_dynamo_exporter() -> bool:
    return 'dynamo' in inspect.signature(torch.onnx.export).parameters


@dataclass
class GraphSpec:
    """A module to export with example inputs and the names and dynamic axes of its inputs and outputs."""
    module: torch.nn.Module
    args: tuple
    input_names: Sequence[str]
    output_names: Sequence[str]
    dynamic_axes: Dict[str, Dict[int, str]]
    derived: Optional[Dict[str, str]] = None  # axis name -> the axis it is twice (dynamo's derived dimensions)
    interpolation_matmuls: bool = False  # see _interpolation_as_matmuls


@contextlib.contextmanager
def _interpolation_as_matmuls():
    """F.interpolate's `area` and `bicubic` modes on a fixed output size become two MatMuls with the interpolation's
    own matrices (F.interpolate applied to the identity, in float64): the TorchScript exporter has no ONNX form of
    `area` for sizes that do not divide (16 -> 13); both exporters then write the same resampling."""
    original = F.interpolate
    matrices = {}  # filled by an eager call before the export: the exporters then see constants

    def matrix(n_in, n_out, mode):
        if (n_in, n_out, mode) not in matrices:
            eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1)
            matrices[n_in, n_out, mode] = original(eye, size=(n_out, 1), mode=mode)[:, 0, :, 0].T.contiguous()
        return matrices[n_in, n_out, mode]  # [n_out, n_in]

    def interpolate(x, size=None, scale_factor=None, mode='nearest', align_corners=None, **kw):
        if mode in ('area', 'bicubic') and size is not None and x.dim() == 4 and not align_corners and not kw:
            oh, ow = (size, size) if isinstance(size, int) else size
            mh = matrix(int(x.shape[2]), int(oh), mode).to(x.dtype)
            mw = matrix(int(x.shape[3]), int(ow), mode).to(x.dtype)
            return torch.matmul(torch.matmul(mh, x), mw.T)
        return original(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners, **kw)

    F.interpolate = interpolate
    try:
        yield
    finally:
        F.interpolate = original


@contextlib.contextmanager
def _quiet():
    """The exporters' progress prints and tracer warnings stay out of moefy_export's output."""
    loggers = [logging.getLogger(n) for n in ('torch.onnx', 'torch.export', 'torch._dynamo', 'onnxscript')]
    levels = [lg.level for lg in loggers]
    # NNPACK's "Unsupported hardware" comes from C++ on the small convolutions of a trace
    nnpack_off = torch.backends.nnpack.flags(enabled=False)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), nnpack_off:
        warnings.simplefilter('ignore')
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def export(spec: GraphSpec, path: str, dynamo: bool) -> None:
    spec.module.eval()
    patch = _interpolation_as_matmuls() if spec.interpolation_matmuls else contextlib.nullcontext()
    with torch.no_grad(), patch, _quiet():
        if spec.interpolation_matmuls:
            spec.module(*spec.args)
        if dynamo:
            torch.onnx.export(spec.module, spec.args, path, dynamo=True, input_names=list(spec.input_names),
                              output_names=list(spec.output_names), dynamic_shapes=_dynamic_shapes(spec),
                              external_data=True, optimize=True, verbose=False)
        else:
            kwargs = {'dynamo': False} if has_dynamo_exporter() else {}
            torch.onnx.export(spec.module, spec.args, path, input_names=list(spec.input_names),
                              output_names=list(spec.output_names), dynamic_axes=spec.dynamic_axes,
                              opset_version=TORCHSCRIPT_OPSET, do_constant_folding=True, **kwargs)


def _dynamic_shapes(spec: GraphSpec):
    """dynamic_axes as torch.export dimensions; an axis named in `derived` is twice another (the CFG-doubled batch)."""
    dims = {}
    for name, axes in spec.dynamic_axes.items():
        for axis_name in axes.values():
            if axis_name not in dims and axis_name not in (spec.derived or {}):
                dims[axis_name] = torch.export.Dim(axis_name, min=0)
    for axis_name, base in (spec.derived or {}).items():
        dims[axis_name] = 2 * dims[base]
    names = iter(spec.input_names)

    def shape_of(_arg):
        axes = spec.dynamic_axes.get(next(names))
        return {a: dims[n] for a, n in axes.items()} if axes else None

    # the same nesting as the arguments (the step graph's past keys and values come as one list)
    return tuple([shape_of(t) for t in a] if isinstance(a, (list, tuple)) else shape_of(a) for a in spec.args)

"""One external-data file for the transformer's two graphs (full and step): every initializer of either graph is
written once, deduplicated by content, at a 64-byte aligned offset, and both graphs point into it. The exporters'
own weight files (inline, `<graph>.onnx.data`, or one file per tensor above 2 GB) are read tensor by tensor."""
import hashlib
import os
from typing import Dict

import onnx
from onnx import numpy_helper

ALIGN = 64
INLINE_BELOW = 1024  # bytes: shape constants and the like stay in the graph, as onnx's own external-data helper does


def _external(tensor: onnx.TensorProto) -> Dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _tensor_bytes(tensor: onnx.TensorProto, base: str) -> bytes:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        info = _external(tensor)
        with open(os.path.join(base, info['location']), 'rb') as f:
            f.seek(int(info.get('offset', 0)))
            return f.read(int(info['length'])) if 'length' in info else f.read()
    if tensor.HasField('raw_data'):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()  # typed fields (float_data, int64_data, ...): little-endian


def _clear_data(tensor: onnx.TensorProto) -> None:
    for field in ('raw_data', 'float_data', 'int32_data', 'int64_data', 'double_data', 'uint64_data', 'string_data'):
        tensor.ClearField(field)
    del tensor.external_data[:]


class SharedWeights:
    """transformer.data, filled graph by graph."""

    def __init__(self, folder: str, name: str = 'transformer.data'):
        self.name = name
        self.path = os.path.join(folder, name)
        self.offsets: Dict[bytes, int] = {}
        self.size = 0
        open(self.path, 'wb').close()

    def add_graph(self, src: str, dst: str) -> None:
        """Reads the exported graph `src` (and its weights beside it) and writes `dst` pointing into this file."""
        model = onnx.load(src, load_external_data=False)
        base = os.path.dirname(os.path.abspath(src))
        with open(self.path, 'ab') as out:
            for tensor in model.graph.initializer:
                data = _tensor_bytes(tensor, base)
                if len(data) < INLINE_BELOW:
                    if tensor.data_location == onnx.TensorProto.EXTERNAL:
                        _clear_data(tensor)
                        tensor.data_location = onnx.TensorProto.DEFAULT
                        tensor.raw_data = data
                    continue
                offset = self._place(out, data)
                _clear_data(tensor)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (('location', self.name), ('offset', str(offset)), ('length', str(len(data)))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
        onnx.save(model, dst)

    def _place(self, out, data: bytes) -> int:
        key = hashlib.sha256(data).digest()
        if key not in self.offsets:
            pad = -self.size % ALIGN
            out.write(b'\0' * pad + data)
            self.offsets[key] = self.size + pad
            self.size += pad + len(data)
        return self.offsets[key]

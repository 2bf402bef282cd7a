"""The export, stage by stage: load VAR and its VQVAE, export the full and the step graph (their weights packed into
one transformer.data as they come), the VQ next-scale graphs and the decoder, then the manifest; all in a temporary
folder that becomes `-o` at the end."""
import hashlib
import os
import shutil
from typing import Optional

import onnx
import torch

from . import graph_specs, manifest
from .errors import UserError
from .options import ExportOptions, check_options
from .output_folder import OutputFolder, free_bytes
from .progress import Stages
from .shared_weights import SharedWeights
from .torch_export import export, has_dynamo_exporter
from .var_code import import_var_models
from .var_config import PATCH_NUMS_256
from .var_models import LoadedVar, load_checkpoints, random_models

TWO_GB = 2 ** 31


def run(o: ExportOptions) -> dict:
    """Writes the pipeline folder `o.out`; returns its manifest."""
    log = Stages(o.quiet)
    check_options(o)
    if o.dynamo and not has_dynamo_exporter():
        raise UserError(f'--dynamo: torch {torch.__version__} has no dynamo ONNX exporter (torch >= 2.5)')
    models = import_var_models(o.var_code)
    reuse = manifest.read(o.vae_from, '--vae-from') if o.vae_from else None
    with log.stage('load VAR and its VQVAE'):
        loaded = _load(models, o)
        digest = vae_digest(loaded.vae)
    cfg = loaded.config
    if reuse is not None and manifest.vae_digest_of(reuse) != digest:
        raise UserError(f'--vae-from {o.vae_from}: exported from another VQVAE (its weights differ)')
    need, free = _required_bytes(loaded, o.half, reuse is not None), free_bytes(o.out)
    if free < need:
        raise UserError(f'-o {o.out}: {free / 1e9:.1f} GB free, the export needs about {need / 1e9:.1f} GB')
    dtype = torch.float16 if o.half else torch.float32
    var = loaded.var.half() if o.half else loaded.var
    log.say(f'VAR-d{cfg.depth} (width {cfg.width}, {cfg.heads} heads, {len(cfg.patch_nums)} scales, '
            f'{sum(p.numel() for p in var.parameters()) / 1e6:.1f} M parameters, {_name(dtype)}), '
            f'{"dynamo" if o.dynamo else "torchscript"} exporter')
    with OutputFolder(o.out) as folder:
        _export_transformer(var, loaded, dtype, folder, o.dynamo, log)
        _export_vae_graphs(loaded, folder, o, reuse, log)
        content = manifest.manifest(cfg, _name(dtype), _source(o, digest, reuse is not None))
        manifest.write(folder, content)
    log.say(f'wrote {os.path.abspath(o.out)} in {log.total():.1f} s')
    return content


def _load(models, o: ExportOptions) -> LoadedVar:
    if o.random:
        return random_models(models, o.depth, o.seed, o.patch_nums or PATCH_NUMS_256, o.shared_aln, o.vae)
    loaded = load_checkpoints(models, o.ckpt, o.vae, o.patch_nums)
    if o.shared_aln and not loaded.config.shared_aln:
        raise UserError(f'--shared-aln: {o.ckpt} has an AdaLN per block (no shared_ada_lin tensors)')
    return loaded


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace('torch.', '')


def vae_digest(vae: torch.nn.Module) -> str:
    """The VQVAE's weights, hashed: --vae-from reuses graphs only of the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        if name == 'quantize.ema_vocab_hit_SV':
            continue  # training statistics, sized by the patch layout; not used by the graphs
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _required_bytes(loaded: LoadedVar, half: bool, reuse_vae: bool) -> int:
    """Peak disk use: transformer.data plus one exporter's copy of the weights while it is packed, and the decoder."""
    transformer = sum(p.numel() for p in loaded.var.parameters()) * (2 if half else 4)
    decoder = 0 if reuse_vae else sum(p.numel() for p in loaded.vae.decoder.parameters()) * 4 * 2
    return 2 * transformer + decoder + (64 << 20)


def _export_transformer(var, loaded: LoadedVar, dtype, folder: str, dynamo: bool, log: Stages) -> None:
    """The full and the step graph, each packed into transformer.data right after its export (so that the disk
    holds one exporter's copy of the weights at a time)."""
    weights = SharedWeights(folder, manifest.WEIGHTS)
    scratch = os.path.join(folder, 'scratch')
    for name, spec in ((manifest.FULL, graph_specs.full_spec(var, loaded.config, dtype)),
                       (manifest.STEP, graph_specs.step_spec(var, loaded.config, dtype))):
        os.mkdir(scratch)
        with log.stage(f'export {name}'):
            export(spec, os.path.join(scratch, name), dynamo)
        with log.stage(f'pack {name}\'s weights into {manifest.WEIGHTS}'):
            weights.add_graph(os.path.join(scratch, name), os.path.join(folder, name))
        shutil.rmtree(scratch)


def _export_vae_graphs(loaded: LoadedVar, folder: str, o: ExportOptions, reuse: Optional[dict], log: Stages) -> None:
    """The VQ next-scale graphs and the decoder, or those of --vae-from's folder (the decoder always; the VQ graphs
    when the patch layout is the same)."""
    cfg = loaded.config
    vq_files = manifest.vq_next_scale_files(len(cfg.patch_nums))
    reuse_vq = reuse is not None and reuse.get('var', {}).get('patchNums') == list(cfg.patch_nums)
    if reuse is not None:
        with log.stage(f'take {"the VQVAE graphs" if reuse_vq else manifest.DECODER} from {o.vae_from}'):
            for name in (vq_files if reuse_vq else []) + [manifest.DECODER]:
                for f in _graph_files(o.vae_from, name):
                    _link_or_copy(os.path.join(o.vae_from, f), os.path.join(folder, f))
    if not reuse_vq:
        with log.stage(f'export {len(vq_files)} VQ next-scale graphs'):
            for si, name in enumerate(vq_files):
                _export_vae_graph(graph_specs.vq_next_scale_spec(loaded.vae, cfg, si), name, folder, o.dynamo)
    if reuse is None:
        with log.stage(f'export {manifest.DECODER}'):
            _export_vae_graph(graph_specs.decoder_spec(loaded.vae, cfg), manifest.DECODER, folder, o.dynamo)


def _export_vae_graph(spec, name: str, folder: str, dynamo: bool) -> None:
    """A VQVAE graph as one file, or with `<name>.data` beside it above 2 GB (docs/pipeline.md). Exported alone in
    a scratch folder: when the exporter wrote no weight file beside it (TorchScript below 2 GB) it is moved as is."""
    work = os.path.join(folder, 'scratch')
    os.mkdir(work)
    src, dst = os.path.join(work, name), os.path.join(folder, name)
    export(spec, src, dynamo)
    if os.listdir(work) == [name]:
        os.replace(src, dst)
    else:
        model = onnx.load(src)
        if model.ByteSize() < TWO_GB:
            onnx.save(model, dst)
        else:
            onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=f'{os.path.splitext(name)[0]}.data')
    shutil.rmtree(work)


def _graph_files(folder: str, name: str):
    """A VQVAE graph and its `<name>.data` when it has one (docs/pipeline.md)."""
    data = f'{os.path.splitext(name)[0]}.data'
    return [name] + ([data] if os.path.exists(os.path.join(folder, data)) else [])


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _source(o: ExportOptions, digest: str, reused: bool) -> dict:
    return {'exporter': 'dynamo' if o.dynamo else 'torchscript', 'torch': torch.__version__.split('+')[0],
            'checkpoint': None if o.random else os.path.basename(o.ckpt),
            'vae': os.path.basename(o.vae) if o.vae else None,
            'random': {'depth': o.depth, 'seed': o.seed} if o.random else None,
            'vaeDigest': digest,
            'vaeGraphsFrom': os.path.abspath(o.vae_from) if reused else None}

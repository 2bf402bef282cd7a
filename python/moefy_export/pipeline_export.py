"""The export, stage by stage: load VAR and its VQVAE, export the full and the step graph (their weights packed into
one transformer.data as they come), the VQ next-scale graphs and the decoder, then the manifest; all in a temporary
folder that becomes `-o` at the end."""
import hashlib
import os
import shutil

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


def vae_digest(vae: torch.nn.Module) -> str:
    """The VQVAE's weights, hashed: --vae-from reuses graphs only of the same weights."""
    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        if name == 'quantize.ema_vocab_hit_SV':
            continue  # training statistics, sized by the patch layout; not used by the graphs
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _save_self_contained(src: str, dst: str) -> None:
    """A VQVAE graph as one file, or with `<name>.data` beside it above 2 GB (docs/pipeline.md)."""
    model = onnx.load(src)
    if model.ByteSize() < TWO_GB:
        onnx.save(model, dst)
    else:
        stem = os.path.splitext(os.path.basename(dst))[0]
        onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True, location=f'{stem}.data')


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _graph_files(folder: str, name: str):
    """A VQVAE graph and its `<name>.data` when it has one (docs/pipeline.md)."""
    data = f'{os.path.splitext(name)[0]}.data'
    return [name] + ([data] if os.path.exists(os.path.join(folder, data)) else [])


def _required_bytes(loaded: LoadedVar, half: bool, reuse_vae: bool) -> int:
    """Peak disk use: transformer.data plus one exporter's copy of the weights while it is packed, and the decoder."""
    transformer = sum(p.numel() for p in loaded.var.parameters()) * (2 if half else 4)
    decoder = 0 if reuse_vae else sum(p.numel() for p in loaded.vae.decoder.parameters()) * 4 * 2
    return 2 * transformer + decoder + (64 << 20)


def run(o: ExportOptions) -> dict:
    log = Stages(o.quiet)
    check_options(o)
    if o.dynamo and not has_dynamo_exporter():
        raise UserError(f'--dynamo: torch {torch.__version__} has no dynamo ONNX exporter (torch >= 2.5)')
    models = import_var_models(o.var_code)
    reuse = manifest.read(o.vae_from, '--vae-from') if o.vae_from else None
    with log.stage('load VAR and its VQVAE'):
        if o.random:
            loaded = random_models(models, o.depth, o.seed, o.patch_nums or PATCH_NUMS_256,
                                   o.shared_aln, o.vae)
        else:
            loaded = load_checkpoints(models, o.ckpt, o.vae, o.patch_nums)
            if o.shared_aln and not loaded.config.shared_aln:
                raise UserError(f'--shared-aln: {o.ckpt} has an AdaLN per block (no shared_ada_lin tensors)')
        digest = vae_digest(loaded.vae)
    cfg = loaded.config
    if reuse is not None and manifest.vae_digest_of(reuse) != digest:
        raise UserError(f'--vae-from {o.vae_from}: exported from another VQVAE (its weights differ)')
    reuse_vq = reuse is not None and reuse.get('var', {}).get('patchNums') == list(cfg.patch_nums)
    need = _required_bytes(loaded, o.half, reuse is not None)
    if free_bytes(o.out) < need:
        raise UserError(f'-o {o.out}: {free_bytes(o.out) / 1e9:.1f} GB free, the export needs about {need / 1e9:.1f} GB')
    dtype = torch.float16 if o.half else torch.float32
    var = loaded.var.half() if o.half else loaded.var
    exporter = 'dynamo' if o.dynamo else 'torchscript'
    log.say(f'VAR-d{cfg.depth} (width {cfg.width}, {cfg.heads} heads, {len(cfg.patch_nums)} scales, '
            f'{sum(p.numel() for p in var.parameters()) / 1e6:.1f} M parameters, {str(dtype)[6:]}), {exporter} exporter')

    with OutputFolder(o.out) as tmp:
        scratch = os.path.join(tmp, 'scratch')
        weights = SharedWeights(tmp, manifest.WEIGHTS)
        for name, spec in ((manifest.FULL, graph_specs.full_spec(var, cfg, dtype)),
                           (manifest.STEP, graph_specs.step_spec(var, cfg, dtype))):
            os.mkdir(scratch)
            with log.stage(f'export {name}'):
                export(spec, os.path.join(scratch, name), o.dynamo)
            with log.stage(f'pack {name}\'s weights into {manifest.WEIGHTS}'):
                weights.add_graph(os.path.join(scratch, name), os.path.join(tmp, name))
            shutil.rmtree(scratch)
        vq_files = manifest.vq_next_scale_files(len(cfg.patch_nums))
        if reuse is not None:
            taken = (vq_files if reuse_vq else []) + [manifest.DECODER]
            with log.stage(f'take {"the VQVAE graphs" if reuse_vq else manifest.DECODER} from {o.vae_from}'):
                for name in taken:
                    for f in _graph_files(o.vae_from, name):
                        _link_or_copy(os.path.join(o.vae_from, f), os.path.join(tmp, f))
        os.mkdir(scratch)
        if not reuse_vq:
            with log.stage(f'export {len(vq_files)} VQ next-scale graphs'):
                for si, name in enumerate(vq_files):
                    export(graph_specs.vq_next_scale_spec(loaded.vae, cfg, si), os.path.join(scratch, name), o.dynamo)
                    _save_self_contained(os.path.join(scratch, name), os.path.join(tmp, name))
        if reuse is None:
            with log.stage(f'export {manifest.DECODER}'):
                export(graph_specs.decoder_spec(loaded.vae, cfg), os.path.join(scratch, manifest.DECODER), o.dynamo)
                _save_self_contained(os.path.join(scratch, manifest.DECODER), os.path.join(tmp, manifest.DECODER))
        shutil.rmtree(scratch)
        source = {'exporter': exporter, 'torch': torch.__version__.split('+')[0],
                  'checkpoint': None if o.random else os.path.basename(o.ckpt),
                  'vae': os.path.basename(o.vae) if o.vae else None,
                  'random': {'depth': o.depth, 'seed': o.seed} if o.random else None,
                  'vaeDigest': digest,
                  'vaeGraphsFrom': os.path.abspath(o.vae_from) if reuse is not None else None}
        content = manifest.manifest(cfg, str(dtype)[6:], source)
        manifest.write(tmp, content)
    log.say(f'wrote {os.path.abspath(o.out)} in {log.total():.1f} s')
    return content

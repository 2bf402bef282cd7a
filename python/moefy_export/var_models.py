"""VAR and its VQVAE as PyTorch modules of VAR's own code, from the published checkpoints (plain state_dicts) or from
seeded random weights. Checkpoint tensors are memory-mapped and assigned, not copied: a VAR-d30 (8 GB) is not held
twice."""
import contextlib
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from .errors import UserError
from .var_config import PATCH_NUMS_256, VaeConfig, VarConfig, patch_nums_of_levels, random_var_config


@dataclass
class LoadedVar:
    var: nn.Module
    vae: nn.Module
    config: VarConfig
    vae_config: VaeConfig


@contextlib.contextmanager
def _no_default_init():
    """Skips PyTorch's default parameter initialisation while the modules are built (their weights are assigned from
    the checkpoint right after), as VAR's own build_vae_var does, but only for this block."""
    classes = (nn.Linear, nn.LayerNorm, nn.Conv2d, nn.GroupNorm, nn.Embedding)
    saved = {c: c.reset_parameters for c in classes}
    try:
        for c in classes:
            c.reset_parameters = lambda self: None
        yield
    finally:
        for c, f in saved.items():
            c.reset_parameters = f


@contextlib.contextmanager
def _stdout_off():
    with open(os.devnull, 'w') as devnull, contextlib.redirect_stdout(devnull):
        yield


def read_state_dict(path: str, what: str, flag: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f'{flag} {path}: no such file')
    try:
        # memory-mapped where the file allows it (torch.save's zip format, every torch since 1.6)
        sd = torch.load(path, map_location='cpu', mmap=zipfile.is_zipfile(path), weights_only=True)
    except Exception as e:  # a file of another kind, a truncated zip, a pickle of arbitrary objects
        if isinstance(e, pickle.UnpicklingError) and 'allowed global' in str(e):
            raise UserError(f'{flag} {path}: not a plain checkpoint of {what} (it holds objects other than '
                            f'tensors)') from None
        raise UserError(f'{flag} {path}: not a PyTorch checkpoint (torch.load cannot read it)') from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f'{flag} {path}: not a plain state_dict of {what} (a dict of tensors)')
    return sd


def _shape(sd: dict, key: str, path: str, flag: str, what: str):
    if key not in sd:
        raise UserError(f'{flag} {path}: not {what} (no tensor {key})')
    return tuple(sd[key].shape)


def vae_config_of(sd: dict, path: str) -> VaeConfig:
    what = 'a VAR VQVAE checkpoint'
    vocab, cvae = _shape(sd, 'quantize.embedding.weight', path, '--vae', what)
    ch = _shape(sd, 'decoder.conv_out.weight', path, '--vae', what)[1]
    phis = {int(m.group(1)) for k in sd for m in [re.match(r'quantize\.quant_resi\.qresi_ls\.(\d+)\.', k)] if m}
    if not phis:
        raise UserError(f'--vae {path}: a VQVAE with unshared Phi convolutions is not supported (VAR\'s share 4)')
    return VaeConfig(vocab=vocab, cvae=cvae, ch=ch, share_quant_resi=len(phis))


def var_config_of(sd: dict, path: str, patch_nums: Optional[Sequence[int]]) -> VarConfig:
    what = 'a VAR transformer checkpoint'
    flag = '--ckpt'
    rows, width = _shape(sd, 'class_emb.weight', path, flag, what)
    depth = len({int(m.group(1)) for k in sd for m in [re.match(r'blocks\.(\d+)\.', k)] if m})
    if depth == 0:
        raise UserError(f'{flag} {path}: not {what} (no blocks.N tensors)')
    hidden = _shape(sd, 'blocks.0.ffn.fc1.weight', path, flag, what)[0]
    vocab = _shape(sd, 'head.weight', path, flag, what)[0]
    cvae = _shape(sd, 'word_embed.weight', path, flag, what)[1]
    tokens = _shape(sd, 'pos_1LC', path, flag, what)[1]
    l2 = 'blocks.0.attn.scale_mul_1H11' in sd
    heads = sd['blocks.0.attn.scale_mul_1H11'].shape[1] if l2 else width // 64
    shared = 'shared_ada_lin.1.weight' in sd
    from_levels = patch_nums_of_levels(sd['lvl_1L'].reshape(-1).tolist()) if 'lvl_1L' in sd else ()
    if patch_nums is not None:
        patch_nums = tuple(patch_nums)
        if from_levels and from_levels != patch_nums or sum(p * p for p in patch_nums) != tokens:
            have = ','.join(map(str, from_levels)) if from_levels else f'{tokens} tokens'
            raise UserError(f'--patch-nums {",".join(map(str, patch_nums))} does not fit {path} ({have})')
    else:
        patch_nums = from_levels or PATCH_NUMS_256
        if sum(p * p for p in patch_nums) != tokens:
            raise UserError(f'{flag} {path}: its {tokens} token positions are not the 256-px layout: give --patch-nums')
    return VarConfig(depth=depth, width=width, heads=heads, hidden=hidden, vocab=vocab, cvae=cvae,
                     num_classes=rows - 1, patch_nums=patch_nums, shared_aln=shared, attn_l2_norm=l2)


def _build(models, cfg: VarConfig, vae_cfg: VaeConfig):
    """VAR's classes with the arguments of VAR's build_vae_var; fused and flash kernels off (not exportable)."""
    vae = models.VQVAE(vocab_size=vae_cfg.vocab, z_channels=vae_cfg.cvae, ch=vae_cfg.ch, test_mode=True,
                       share_quant_resi=vae_cfg.share_quant_resi, v_patch_nums=cfg.patch_nums)
    with _stdout_off():  # VAR's constructor prints its configuration
        var = models.VAR(vae_local=vae, num_classes=cfg.num_classes, depth=cfg.depth, embed_dim=cfg.width,
                         num_heads=cfg.heads, mlp_ratio=cfg.hidden / cfg.width, drop_rate=0., attn_drop_rate=0.,
                         drop_path_rate=0.1 * cfg.depth / 24, norm_eps=1e-6, shared_aln=cfg.shared_aln,
                         cond_drop_rate=0.1, attn_l2_norm=cfg.attn_l2_norm, patch_nums=cfg.patch_nums,
                         flash_if_available=False, fused_if_available=False)
    return var, vae


def _assign(module: nn.Module, sd: dict, path: str, flag: str, what: str):
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise UserError(f'{flag} {path}: does not fit {what} ({" ".join(lines[1:])[:300]})') from None


def load_checkpoints(models, ckpt: str, vae_path: str, patch_nums) -> LoadedVar:
    vae_sd = read_state_dict(vae_path, 'a VAR VQVAE', '--vae')
    vae_cfg = vae_config_of(vae_sd, vae_path)
    sd = read_state_dict(ckpt, 'a VAR transformer', '--ckpt')
    cfg = var_config_of(sd, ckpt, patch_nums)
    if (vae_cfg.vocab, vae_cfg.cvae) != (cfg.vocab, cfg.cvae):
        raise UserError(f'--vae {vae_path} does not match --ckpt {ckpt}: the VQVAE has {vae_cfg.vocab} codes of '
                        f'width {vae_cfg.cvae}, the VAR {cfg.vocab} of width {cfg.cvae}')
    with _no_default_init():
        var, vae = _build(models, cfg, vae_cfg)
    _assign_vae(vae, vae_sd, vae_path, vae_cfg)
    _assign(var, _with_layout_buffers(sd, var), ckpt, '--ckpt', f'VAR-d{cfg.depth}')
    return LoadedVar(var.eval(), vae.eval(), cfg, vae_cfg)


def _assign_vae(vae: nn.Module, sd: dict, path: str, cfg: VaeConfig):
    # the training statistics per scale, sized by the patch layout, as VQVAE.load_state_dict replaces them
    sd = dict(sd, **{'quantize.ema_vocab_hit_SV': vae.quantize.ema_vocab_hit_SV})
    _assign(vae, sd, path, '--vae', f'VAR\'s VQVAE (ch {cfg.ch})')


def _with_layout_buffers(sd: dict, var: nn.Module) -> dict:
    """The buffers that depend only on the patch layout (VAR's constructor computes them), where a checkpoint lacks
    them."""
    missing = {k: v for k, v in var.state_dict().items() if k in ('lvl_1L', 'attn_bias_for_masking') and k not in sd}
    return dict(sd, **missing) if missing else sd


VAE_CH160 = VaeConfig(vocab=4096, cvae=32, ch=160, share_quant_resi=4)


def random_models(models, depth: int, seed: int, patch_nums, shared_aln: bool,
                  vae_path: Optional[str] = None) -> LoadedVar:
    """VAR-d{depth} with VAR's own initialisation, then (as the test fixtures) the AdaLN gate rows and every bias
    redrawn, seeded: VAR's init scales the gates by 1e-5, which leaves each block near the identity and would hide a
    wrong graph. Without `vae_path` the VQVAE (VAR's ch 160 architecture) is random too."""
    torch.manual_seed(seed)
    if vae_path is not None:
        vae_sd = read_state_dict(vae_path, 'a VAR VQVAE', '--vae')
        vae_cfg = vae_config_of(vae_sd, vae_path)
    else:
        vae_sd, vae_cfg = None, VAE_CH160
    cfg = random_var_config(depth, patch_nums, shared_aln, vae_cfg)
    with _no_default_init() if vae_sd is not None else contextlib.nullcontext():  # VAR's init_weights follows
        var, vae = _build(models, cfg, vae_cfg)
    if vae_sd is not None:
        _assign_vae(vae, vae_sd, vae_path, vae_cfg)
    with _stdout_off():
        var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    _redraw_gates_and_biases(var, cfg)
    return LoadedVar(var.eval(), vae.eval(), cfg, vae_cfg)


@torch.no_grad()
def _redraw_gates_and_biases(var: nn.Module, cfg: VarConfig):
    std = math.sqrt(1 / cfg.width / 3)
    for block in var.blocks:
        if cfg.shared_aln:
            block.ada_gss[:, :, :2].normal_(0, 1 / math.sqrt(cfg.width))  # VAR draws ada_gss so, then x 1e-5
        else:
            block.ada_lin[-1].weight[:2 * cfg.width].normal_(0, std * 0.5)
    for name, p in var.named_parameters():
        if name.endswith('bias'):  # Linear biases, q_bias and v_bias
            p.normal_(0, 0.02)

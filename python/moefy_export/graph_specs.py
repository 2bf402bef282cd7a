"""Each graph of the pipeline folder with its input and output names and dynamic axes, as docs/pipeline.md fixes
them, and the example inputs the exporters trace with (sizes away from 0 and 1, which torch.export specialises)."""
from typing import List

import torch

from .graphs import FullSequence, GenerationStep, VaeDecoder, VqNextScale
from .torch_export import GraphSpec
from .var_config import VarConfig

EXAMPLE_B = 2


def full_spec(var, cfg: VarConfig, dtype: torch.dtype) -> GraphSpec:
    label = torch.arange(EXAMPLE_B, dtype=torch.int64) % cfg.num_classes
    x = torch.zeros(EXAMPLE_B, cfg.tokens - cfg.patch_nums[0] ** 2, cfg.cvae, dtype=dtype)
    return GraphSpec(FullSequence(var), (label, x), ['label_B', 'x_BLCv_wo_first_l'], ['logits_BLV'],
                     {'label_B': {0: 'B'}, 'x_BLCv_wo_first_l': {0: 'B'}, 'logits_BLV': {0: 'B'}})


def past_names(depth: int, kind: str) -> List[str]:
    return [f'{kind}_{what}_{i}' for i in range(depth) for what in ('key', 'value')]


def step_spec(var, cfg: VarConfig, dtype: torch.dtype) -> GraphSpec:
    si = 2  # traced at the third scale: a cache of 5 tokens, 9 new ones
    lp, l = sum(p * p for p in cfg.patch_nums[:si]), cfg.patch_nums[si] ** 2
    label = torch.arange(EXAMPLE_B, dtype=torch.int64) % cfg.num_classes
    x = torch.zeros(EXAMPLE_B, l, cfg.cvae, dtype=dtype)
    past = [torch.zeros(2 * EXAMPLE_B, cfg.heads, lp, cfg.head_dim, dtype=dtype) for _ in range(2 * cfg.depth)]
    inputs = ['label_B', 'x_next_BlCv', 'cfg'] + past_names(cfg.depth, 'past')
    outputs = ['logits_BlV'] + past_names(cfg.depth, 'present')
    axes = {'label_B': {0: 'B'}, 'x_next_BlCv': {0: 'B', 1: 'l'}, 'logits_BlV': {0: 'B', 1: 'l'}}
    axes.update({n: {0: 'B2', 2: 'Lp'} for n in past_names(cfg.depth, 'past')})
    axes.update({n: {0: 'B2', 2: 'Lp_plus_l'} for n in past_names(cfg.depth, 'present')})
    return GraphSpec(GenerationStep(var), (label, x, torch.tensor(1.5), past), inputs, outputs, axes,
                     derived={'B2': 'B'})


def vq_next_scale_spec(vae, cfg: VarConfig, si: int) -> GraphSpec:
    pn_last = cfg.patch_nums[-1]
    f_hat = torch.zeros(EXAMPLE_B, cfg.cvae, pn_last, pn_last)
    idx = torch.zeros(EXAMPLE_B, cfg.patch_nums[si] ** 2, dtype=torch.int64)
    last = si == len(cfg.patch_nums) - 1
    outputs = ['f_hat_new'] if last else ['f_hat_new', 'next_in_BlCv']
    axes = {n: {0: 'B'} for n in ['f_hat', 'idx_Bl'] + outputs}
    return GraphSpec(VqNextScale(vae, si), (f_hat, idx), ['f_hat', 'idx_Bl'], outputs, axes, interpolation_matmuls=True)


def decoder_spec(vae, cfg: VarConfig) -> GraphSpec:
    # spatially dynamic: one decoder serves every patch layout (--vae-from reuses it); traced on a 2x2 f_hat, which
    # costs the trace 1/64 of the decoder's run at 16x16 (the tests run the graph at 16x16 against VAR's image)
    f_hat = torch.zeros(EXAMPLE_B, cfg.cvae, 2, 2)
    return GraphSpec(VaeDecoder(vae), (f_hat,), ['f_hat'], ['image'],
                     {'f_hat': {0: 'B', 2: 'h', 3: 'w'}, 'image': {0: 'B', 2: 'H', 3: 'W'}})

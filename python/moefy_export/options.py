"""The exporter's options and the checks that need neither torch nor VAR's code: they answer in a fraction of a
second, before the slow imports."""
import os
from dataclasses import dataclass
from typing import Optional, Sequence

from . import manifest
from .errors import UserError
from .output_folder import check_target
from .var_code import check_checkout


@dataclass
class ExportOptions:
    out: str
    var_code: Optional[str] = None
    ckpt: Optional[str] = None
    vae: Optional[str] = None
    random: bool = False
    depth: Optional[int] = None
    seed: int = 0
    patch_nums: Optional[Sequence[int]] = None
    shared_aln: bool = False
    dynamo: bool = False
    half: bool = False
    vae_from: Optional[str] = None
    quiet: bool = False


def check_options(o: ExportOptions) -> None:
    """Everything that can be judged from the command line and the file system, before VAR's code is imported."""
    if o.random:
        if o.ckpt is not None:
            raise UserError('--random and --ckpt exclude each other')
        if o.depth is None or o.depth < 1:
            raise UserError('--random needs --depth N (N >= 1)')
    else:
        if o.ckpt is None:
            raise UserError('give --ckpt var_dNN.pth (or --random --depth N)')
        if o.vae is None:
            raise UserError('give --vae vae_ch160v4096z32.pth (the VQVAE of the checkpoint)')
        if o.depth is not None:
            raise UserError('--depth goes with --random (a checkpoint\'s depth is read from its tensors)')
    for flag, path in (('--ckpt', o.ckpt), ('--vae', o.vae)):
        if path is not None and not os.path.isfile(path):
            raise UserError(f'{flag} {path}: no such file')
    if o.patch_nums is not None:
        p = list(o.patch_nums)
        if not p or p[0] != 1 or any(b <= a for a, b in zip(p, p[1:])):
            raise UserError(f'--patch-nums {",".join(map(str, p))}: must start at 1 and increase')
    if o.var_code is not None:
        check_checkout(o.var_code)
    if o.vae_from is not None:
        manifest.read(o.vae_from, '--vae-from')
    check_target(o.out)

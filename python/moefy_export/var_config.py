"""What a VAR is, as the manifest records it: sizes read from a checkpoint's tensors (or chosen for random weights)."""
import math
from dataclasses import asdict, dataclass
from typing import List, Tuple

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass(frozen=True)
class VaeConfig:
    vocab: int
    cvae: int
    ch: int
    share_quant_resi: int


@dataclass(frozen=True)
class VarConfig:
    depth: int
    width: int
    heads: int
    hidden: int
    vocab: int
    cvae: int
    num_classes: int
    patch_nums: Tuple[int, ...]
    shared_aln: bool
    attn_l2_norm: bool

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def manifest(self, dtype: str) -> dict:
        return {'depth': self.depth, 'width': self.width, 'heads': self.heads, 'headDim': self.head_dim,
                'hidden': self.hidden, 'vocab': self.vocab, 'cvae': self.cvae, 'numClasses': self.num_classes,
                'nullClass': self.num_classes, 'patchNums': list(self.patch_nums), 'sharedAln': self.shared_aln,
                'dtype': dtype}


def random_var_config(depth: int, patch_nums, shared_aln: bool, vae: VaeConfig) -> VarConfig:
    """VAR's own rule for its released models (models/__init__.py build_vae_var): width 64·depth, one head per 64."""
    width = depth * 64
    return VarConfig(depth=depth, width=width, heads=depth, hidden=4 * width, vocab=vae.vocab, cvae=vae.cvae,
                     num_classes=1000, patch_nums=tuple(patch_nums), shared_aln=shared_aln, attn_l2_norm=True)


def patch_nums_of_levels(lvl_1L: List[int]) -> Tuple[int, ...]:
    """The patch layout a VAR checkpoint's `lvl_1L` buffer (the scale index of every token) describes, or ()."""
    counts = []
    for level in lvl_1L:
        if level == len(counts):
            counts.append(0)
        elif level != len(counts) - 1:
            return ()
        counts[-1] += 1
    sides = tuple(math.isqrt(c) for c in counts)
    return sides if all(s * s == c for s, c in zip(sides, counts)) else ()


def as_dict(c) -> dict:
    return asdict(c)

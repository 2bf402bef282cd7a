"""python -m moefy_export: VAR's PyTorch code and checkpoints → a moefy pipeline folder (docs/pipeline.md).

Exit status: 0 done; 1 bad input or environment (one line `moefy_export: …`); 2 moefy_export's own bug;
130 Ctrl-C; 143 SIGTERM. Nothing is left behind on any of them."""
import argparse
import os
import sys

from .errors import UserError
from .options import ExportOptions, check_options
from .output_folder import Terminated
from .var_config import PATCH_NUMS_256, PATCH_NUMS_512


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage + exit 2 would read as moefy_export's own bug
        raise UserError(message)


def _patch_nums(text: str):
    try:
        values = tuple(int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a comma-separated list of integers') from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f'{text!r}: sides must be >= 1')
    return values


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog='python3 -m moefy_export', description=(
        'Exports a VAR (github.com/FoundationVision/VAR) from its PyTorch code and checkpoints to a moefy pipeline '
        'folder: the teacher-forcing graph, one step graph for every scale, the VQ next-scale graphs and the VQVAE '
        'decoder, the transformer\'s weights stored once.'))
    p.add_argument('--var-code', metavar='DIR', help='a checkout of VAR\'s code (default: an importable `models`)')
    p.add_argument('--ckpt', metavar='FILE', help='VAR checkpoint (a plain state_dict, e.g. var_d16.pth)')
    p.add_argument('--vae', metavar='FILE', help='VQVAE checkpoint (vae_ch160v4096z32.pth); random without it '
                                                 'in --random mode')
    p.add_argument('--random', action='store_true', help='random weights instead of --ckpt (seeded; for tests)')
    p.add_argument('--depth', type=int, metavar='N', help='with --random: VAR-dN (width 64·N, N heads)')
    p.add_argument('--seed', type=int, default=0, metavar='S', help='with --random: the seed (default 0)')
    p.add_argument('--patch-nums', type=_patch_nums, metavar='1,2,…', help=(
        f'patch layout (default: the checkpoint\'s, else VAR 256-px {",".join(map(str, PATCH_NUMS_256))}; '
        f'VAR 512-px: {",".join(map(str, PATCH_NUMS_512))})'))
    p.add_argument('--shared-aln', action='store_true', help='shared AdaLN (VAR\'s --saln); read from a checkpoint')
    p.add_argument('--dynamo', action='store_true', help='PyTorch\'s dynamo exporter (default TorchScript)')
    p.add_argument('--half', action='store_true', help='the transformer in float16 (the VQVAE graphs stay float32)')
    p.add_argument('--vae-from', metavar='DIR', help=(
        'take the VQVAE graphs from an earlier pipeline folder of the same VQVAE weights instead of exporting them '
        '(the decoder always; the VQ next-scale graphs when the patch layout is the same)'))
    p.add_argument('-o', '--output', required=True, metavar='DIR', help='the pipeline folder to write')
    p.add_argument('-q', '--quiet', action='store_true', help='print nothing but errors')
    return p


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        options = ExportOptions(out=args.output, var_code=args.var_code, ckpt=args.ckpt, vae=args.vae,
                                random=args.random, depth=args.depth, seed=args.seed, patch_nums=args.patch_nums,
                                shared_aln=args.shared_aln, dynamo=args.dynamo, half=args.half,
                                vae_from=args.vae_from, quiet=args.quiet)
        check_options(options)
        try:  # torch loads only once the command line and the files are found fine
            from .pipeline_export import run
        except ModuleNotFoundError as e:
            raise UserError(f'needs the Python package `{e.name}` (torch, onnx, numpy): install it in this '
                            f'environment') from None
        run(options)
        return 0
    except UserError as e:
        print(f'moefy_export: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('moefy_export: interrupted', file=sys.stderr)
        return 130
    except Terminated:
        print('moefy_export: terminated', file=sys.stderr)
        return 143
    except MemoryError:
        print('moefy_export: out of memory', file=sys.stderr)
        return 1
    except OSError as e:  # the environment: disk full, permissions, a file that went away
        where = f'{e.filename}: ' if e.filename else ''
        print(f'moefy_export: {where}{e.strerror or e}', file=sys.stderr)
        return 1
    except Exception as e:
        print(f'moefy_export: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""} '
              f'(set MOEFY_EXPORT_DEBUG=1 for the trace)', file=sys.stderr)
        if os.environ.get('MOEFY_EXPORT_DEBUG'):
            raise
        return 2


def run_main() -> None:
    """The `moefy-export` console script of `pip install ./python`."""
    sys.exit(main())

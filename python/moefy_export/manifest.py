"""moefy-pipeline.json (docs/pipeline.md): what the folder holds and where it came from."""
import json
import os
from typing import List, Optional

from .errors import UserError
from .output_folder import MANIFEST
from .var_config import VarConfig

FORMAT, VERSION = 'moefy-pipeline', 1
FULL, STEP, WEIGHTS, DECODER = 'var_full.onnx', 'var_step.onnx', 'transformer.data', 'vqvae_decoder.onnx'


def vq_next_scale_files(scales: int) -> List[str]:
    return [f'vq_nextscale_s{k}.onnx' for k in range(scales)]


def manifest(cfg: VarConfig, dtype: str, source: dict) -> dict:
    return {
        'format': FORMAT, 'version': VERSION, 'kind': 'dense',
        'var': cfg.manifest(dtype),
        'cfg': {'rule': 'linear', 'default': 4.0},  # VAR's demo settings
        'sampling': {'topK': 900, 'topP': 0.95},
        'files': {'full': FULL, 'step': STEP, 'vqNextScale': vq_next_scale_files(len(cfg.patch_nums)),
                  'decoder': DECODER},
        'source': source,
    }


def write(folder: str, content: dict) -> None:
    with open(os.path.join(folder, MANIFEST), 'w') as f:
        json.dump(content, f, indent=2)
        f.write('\n')


def read(folder: str, flag: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path) as f:
            content = json.load(f)
    except FileNotFoundError:
        raise UserError(f'{flag} {folder}: not a pipeline folder (no {MANIFEST})') from None
    except (OSError, ValueError) as e:
        raise UserError(f'{flag} {folder}: unreadable {MANIFEST} ({e})') from None
    if not isinstance(content, dict) or content.get('format') != FORMAT:
        raise UserError(f'{flag} {folder}: {MANIFEST} is not a moefy pipeline manifest')
    if not isinstance(content.get('version'), int) or content['version'] > VERSION:
        raise UserError(f'{flag} {folder}: pipeline format version {content.get("version")} is newer than this '
                        f'exporter\'s ({VERSION})')
    return content


def vae_digest_of(content: dict) -> Optional[str]:
    return (content.get('source') or {}).get('vaeDigest')

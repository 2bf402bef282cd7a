"""Finds VAR's own model code (github.com/FoundationVision/VAR): a checkout given with --var-code, or an importable
`models` package. The graphs are built from these classes, so they are VAR's by construction."""
import importlib
import os
import sys

from .errors import UserError

REPO = 'github.com/FoundationVision/VAR'


def check_checkout(var_code: str) -> None:
    if not os.path.isfile(os.path.join(var_code, 'models', 'var.py')):
        raise UserError(f'--var-code {var_code}: not a VAR checkout (no models/var.py in it; {REPO})')


def import_var_models(var_code):
    """Returns VAR's `models` package (VAR, VQVAE, ...); `var_code` is a checkout's folder or None."""
    if var_code is not None:
        check_checkout(var_code)
        sys.path.insert(0, os.path.abspath(var_code))
    try:
        models = importlib.import_module('models')
        importlib.import_module('models.var')
    except ModuleNotFoundError as e:
        if var_code is None and e.name == 'models':
            raise UserError(f'VAR\'s code is not importable: give --var-code, a checkout of {REPO}') from None
        raise UserError(f'VAR\'s code needs the Python package `{e.name}`: install it in this environment') from None
    if not all(hasattr(models, n) for n in ('VAR', 'VQVAE')):
        where = var_code or os.path.dirname(getattr(models, '__file__', '') or '?')
        raise UserError(f'{where}: its `models` package is not VAR\'s (no VAR and VQVAE classes; {REPO})')
    return models

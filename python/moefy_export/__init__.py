"""moefy_export: VAR's PyTorch code and checkpoints → a moefy pipeline folder (docs/pipeline.md)."""
__version__ = '0.1.0'

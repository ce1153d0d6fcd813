"""Measures layer: pure functions (model | weights | activations, task) -> numbers / tensors."""

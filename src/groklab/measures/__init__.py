"""Measures layer: pure functions (model | weights | activations, task) -> numbers / tensors.

A measure never trains and never touches files; call it in a notebook on any checkpoint:

    from groklab.measures import progress_measures
    progress_measures(run.model(step=5000), run.task)
"""

from groklab.measures.fourier import (
    basis_names,
    component_norms,
    fft1d,
    fft2d,
    fourier_basis,
    frequency_fve,
    frequency_norms,
    gini,
    key_frequencies,
)
from groklab.measures.progress import (
    check_modular_addition,
    cos3d_coefficients,
    model_key_frequencies,
    neuron_clusters,
    progress_measures,
    sum_directions,
)
from groklab.measures.registry import (
    MEASURES,
    MeasureSet,
    check_measures,
    final_key_frequencies,
    make_measures,
    register_measure,
)
from groklab.measures.weight_stats import FEATURES, kernel_stats, matrix_stats, weight_statistics
from groklab.measures.weights import weight_norms

__all__ = [
    "FEATURES",
    "MEASURES",
    "MeasureSet",
    "kernel_stats",
    "matrix_stats",
    "weight_statistics",
    "basis_names",
    "check_measures",
    "final_key_frequencies",
    "make_measures",
    "model_key_frequencies",
    "check_modular_addition",
    "component_norms",
    "cos3d_coefficients",
    "fft1d",
    "fft2d",
    "fourier_basis",
    "frequency_fve",
    "frequency_norms",
    "gini",
    "key_frequencies",
    "neuron_clusters",
    "progress_measures",
    "register_measure",
    "sum_directions",
    "weight_norms",
]

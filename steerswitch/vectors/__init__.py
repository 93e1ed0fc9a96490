"""Steering vectors: the vector type, extraction, the per-model registry, SAE features, GGUF interop,
and the shipped contrastive prompt sets.

Depends only on `steerswitch.engine` (capture and `Steer`); never runs generation loops itself.
"""

from steerswitch.vectors.extract import (
    Diagnosis,
    ExtractionError,
    LayerDiagnosis,
    diagnose,
    domain_vectors,
    mean_diff,
    model_identity,
    paired_differences,
    pca,
)
from steerswitch.vectors.gguf_io import GGUFError, export_gguf, import_gguf
from steerswitch.vectors.prompts import DOMAINS, NEUTRAL, PromptSetError, domain_keywords, load_prompt_set, read_prompt_file
from steerswitch.vectors.registry import PromptRef, RegistryEntry, RegistryError, VectorRegistry, build_registry
from steerswitch.vectors.sae import SAEError, SparseAutoencoder, steers_from_features
from steerswitch.vectors.vector import SteeringVector, VectorFormatError, VectorMetadata, sha256_file, sha256_texts

__all__ = [
    "DOMAINS",
    "NEUTRAL",
    "Diagnosis",
    "ExtractionError",
    "GGUFError",
    "LayerDiagnosis",
    "PromptRef",
    "PromptSetError",
    "RegistryEntry",
    "RegistryError",
    "SAEError",
    "SparseAutoencoder",
    "SteeringVector",
    "VectorFormatError",
    "VectorMetadata",
    "VectorRegistry",
    "build_registry",
    "diagnose",
    "domain_keywords",
    "domain_vectors",
    "export_gguf",
    "import_gguf",
    "load_prompt_set",
    "mean_diff",
    "model_identity",
    "paired_differences",
    "pca",
    "read_prompt_file",
    "sha256_file",
    "sha256_texts",
    "steers_from_features",
]

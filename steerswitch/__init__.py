"""steerswitch: steered coding agents with per-step vector switching.

The public API is small: `Session` (model + tokenizer + engine + registry), `SteeringEngine`,
`Steer`, `VectorRegistry`, `load_model`. Everything else lives in the
subpackages (vectors, agents, orchestrator, rag, benchmarks, arena).
"""

from steerswitch.engine import GenerationResult, Steer, SteeringEngine, SteeringError, decoder_layers, load_model
from steerswitch.session import Session
from steerswitch.vectors.registry import VectorRegistry

__version__ = "0.1.0"

__all__ = ["GenerationResult", "Session", "Steer", "SteeringEngine", "SteeringError", "decoder_layers", "load_model", "VectorRegistry", "__version__"]

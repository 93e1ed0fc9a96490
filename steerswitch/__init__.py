"""steerswitch: steered coding agents with per-step vector switching.

The public API is small: `SteeringEngine`, `Steer`, `load_model`. Everything else lives in the
subpackages (vectors, agents, orchestrator, rag, benchmarks, arena).
"""

from steerswitch.engine import GenerationResult, Steer, SteeringEngine, SteeringError, decoder_layers, load_model

__version__ = "0.1.0"

__all__ = ["GenerationResult", "Steer", "SteeringEngine", "SteeringError", "decoder_layers", "load_model", "__version__"]

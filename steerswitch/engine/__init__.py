"""Model loading, layer discovery, the steering engine, generation and activation capture."""

from steerswitch.engine.capture import capture_residuals, capture_texts
from steerswitch.engine.loading import (
    LayerDiscoveryError,
    ModelNotFoundError,
    context_limit,
    decoder_layers,
    load_model,
    model_info,
    resolve_model_path,
)
from steerswitch.engine.steering import GenerationResult, Steer, SteeringEngine, SteeringError, SteeringPlan

__all__ = [
    "GenerationResult",
    "LayerDiscoveryError",
    "ModelNotFoundError",
    "Steer",
    "SteeringEngine",
    "SteeringError",
    "SteeringPlan",
    "capture_residuals",
    "capture_texts",
    "context_limit",
    "decoder_layers",
    "load_model",
    "model_info",
    "resolve_model_path",
]

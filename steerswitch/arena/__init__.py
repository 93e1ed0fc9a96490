"""The Steering Arena (`steerswitch serve`): a local FastAPI app that streams baseline and steered
generations side by side (one per-row batch per request), runs orchestrated tasks with a live
step timeline, and shows the registry's vector geometry. See `app.py` for the routes; the page
is plain HTML/CSS/JS modules under `static/` (no build step).

The arena owns no steering or generation logic: it calls the engine, the orchestrator and the
benchmark metrics.
"""

from steerswitch.arena.app import build_server, create_app, load_app, serve
from steerswitch.arena.schemas import ArenaLimits

__all__ = ["ArenaLimits", "build_server", "create_app", "load_app", "serve"]

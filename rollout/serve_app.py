"""The Ray Serve application: replicas of the streaming engine behind the OpenAI-compatible API.

python -m launch.serve --model runs/smollm2-gsm8k/checkpoints/000041-stage3-rewrite
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI
from ray import serve

from cluster.devices import hidden_gpus_env
from cluster.typed_config import option, section
from rollout.config import RolloutConfig
from rollout.openai_api import ChatRequest, CompletionRequest, OpenAIServer, install_error_handlers


@dataclass
class ServeConfig:
    name: str = option("student", "Model name that clients pass as `model` (and /v1/models lists).")
    host: str = option(
        "127.0.0.1",
        "Address the HTTP proxy listens on; 127.0.0.1 keeps it to this machine, 0.0.0.0 opens it to the network.",
    )
    port: int = option(8000, "HTTP port.")
    replicas: int = option(1, "Engine replicas; Serve spreads requests over them.")
    cpus_per_replica: float = option(1.0, "Logical CPUs reserved per replica.")
    gpus_per_replica: float = option(0.0, "GPUs per replica (its engine's tensor-parallel size when > 1).")
    max_ongoing_requests: int = option(
        32, "Requests one replica holds at once (they share its running batch); more wait in Serve's queue."
    )
    default_max_tokens: int = option(
        512, "max_tokens when a request gives none (capped by the context left after the prompt)."
    )
    engine: RolloutConfig = section(
        RolloutConfig, "The vLLM engine of each replica (dtype, context length, KV cache, threads)."
    )
    seed: int = option(0, "Engine seed (sampled requests are not reproducible across runs unless they are greedy).")
    shutdown_timeout_s: float = option(
        3.0,
        "When the server stops (Ctrl-C, SIGTERM): seconds a replica may spend finishing the requests it "
        "is running before its engine is stopped; their streams then end.",
    )


def build_app(model_path: str, cfg: ServeConfig):
    app = FastAPI(title="bridge-distill student", docs_url=None, redoc_url=None)
    install_error_handlers(app)

    @serve.deployment(
        name="student",
        num_replicas=cfg.replicas,
        max_ongoing_requests=cfg.max_ongoing_requests,
        # Serve's default gives running requests 20 s, and its shutdown gives up on the controller
        # after 30 s: a stop with a long stream open took 40 s. Bounded here instead.
        graceful_shutdown_timeout_s=cfg.shutdown_timeout_s,
        graceful_shutdown_wait_loop_s=min(1.0, cfg.shutdown_timeout_s),
        ray_actor_options={
            "num_cpus": cfg.cpus_per_replica,
            "num_gpus": cfg.gpus_per_replica,
            # A replica given no GPU sees none, as the training actors (cluster/devices.py).
            "runtime_env": {
                "env_vars": {"OMP_NUM_THREADS": str(cfg.engine.torch_threads), **hidden_gpus_env(cfg.gpus_per_replica)}
            },
        },
    )
    @serve.ingress(app)
    class StudentServer:
        def __init__(self, model_path: str, cfg: ServeConfig):
            from cluster.model_source import model_file, resolve_on_node
            from cluster.storage import StorageConfig
            from rollout.streaming import StreamingEngine

            # Each replica resolves the model on its own node (a checkpoint URI: model files only).
            model_path = resolve_on_node(model_path, StorageConfig(), model_file)
            self.api = OpenAIServer(StreamingEngine(model_path, cfg.engine, cfg.seed), cfg.name, cfg.default_max_tokens)

        @app.get("/health")
        def health(self) -> dict:
            return {"status": "ok"}

        @app.get("/v1/models")
        def models(self) -> dict:
            return self.api.models()

        @app.post("/v1/completions")
        async def completions(self, request: CompletionRequest):
            return await self.api.completions(request)

        @app.post("/v1/chat/completions")
        async def chat(self, request: ChatRequest):
            return await self.api.chat(request)

    return StudentServer.bind(model_path, cfg)
